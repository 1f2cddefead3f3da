/*
 * flannel's UDP backend packet loops, in C: the per-packet work of labctl.datapath.udpproxy.
 *
 * Built into build/udpproxy/udpproxy.so (scripts/install.sh; the launcher rebuilds it when this
 * file is newer) and called through ctypes by labctl/datapath/udpproxy.py, which stays the
 * process the supervisor runs: it opens the TUN and the UDP socket, pushes the route table over
 * a control socket and answers packets without a route with ICMP. Each loop below runs in its
 * own thread with the GIL released, so the two directions (TCP data one way, its ACKs the
 * other) use both cores instead of sharing one Python loop.
 *
 * TUN -> UDP (tun_to_udp): read a bare IPv4 packet, look its destination up (longest prefix),
 * TTL - 1, and send the whole packet as the payload of one UDP datagram to node_ip:port.
 * Consecutive packets to the same peer go out in one sendmsg() with UDP_SEGMENT (GSO): the
 * kernel cuts the batch back into one datagram per packet. No route: the packet goes to the
 * launcher over the control socket (it builds the ICMP net unreachable).
 * UDP -> TUN (udp_to_tun): recvmmsg() with UDP_GRO, TTL - 1, one write() per inner packet.
 *
 * Control socket (SOCK_SEQPACKET, one message each): launcher -> here, a route table
 * (u32 count, then count x {u32 network, u8 prefix length, 3 pad, u32 node IP}, all network
 * order, longest prefix first); here -> launcher, a packet without a route. The launcher
 * shutting down its end stops both loops.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

#define MAX_PKT 65536
/* One GSO send carries at most 64 KiB of UDP payload and 64 segments here (the kernel's
 * limit is 128 since 5.x); stay below both. */
#define GSO_BYTES 65000
#define GSO_SEGMENTS 64
#define RX_MSGS 32
#define MAX_ROUTES 4096
#define ROUTE_BYTES 12
/* How long a full send buffer may hold the TUN reader before the batch is dropped: waiting
 * pushes back on TCP through the TUN queue; dropping costs a retransmit. */
#define SNDBUF_WAIT_MS 100

/* The TUN is opened with IFF_VNET_HDR: each read and write starts with this header
 * (<linux/virtio_net.h>, native byte order on little-endian hosts). */
struct vnet_hdr {
    uint8_t flags, gso_type;
    uint16_t hdr_len, gso_size, csum_start, csum_offset;
};
#define VNET_F_NEEDS_CSUM 1
#define VNET_GSO_TCPV4 1
#define TCP_ACK 0x10
#define TCP_PSH 0x08

/* Counter slots shared with the launcher (udpproxy.py COUNTERS, same order). Each slot is
 * written by one thread only. */
enum {
    C_TX, C_RX, C_NO_ROUTE, C_TTL_OUT, C_TTL_IN, C_MALFORMED, C_SNDBUF, C_SEND, C_RUNT,
    C_TUN_WRITE, C_NCOUNTERS
};
static const char *const counter_log[C_NCOUNTERS] = {
    NULL, NULL, NULL, NULL, NULL, NULL,
    "UDP send buffer full for 100 ms, dropping",
    "send to peer failed",
    "dropping a datagram: not IPv4",
    "write to TUN failed",
};

struct route {
    uint32_t net, mask; /* host order */
    struct sockaddr_in peer;
};

struct table {
    in_port_t port; /* network order, the same for every peer */
    uint32_t count;
    struct route r[MAX_ROUTES];
    uint32_t last_dst; /* one-entry cache: a flow asks for the same destination again */
    int last;          /* index into r, -1: no route, -2: cache empty */
    uint8_t msg[4 + MAX_ROUTES * ROUTE_BYTES]; /* the control message being read */
};

/* Count one occurrence of counter `slot`; log the 1st, 2nd, 4th, 8th... as ErrorLog does. */
static void count_error(unsigned long long *counters, int slot, int err) {
    unsigned long long n = ++counters[slot];
    if (counter_log[slot] && (n & (n - 1)) == 0)
        fprintf(stderr, "labctl.datapath.udpproxy[%d]: %s: %s (seen %llu times)\n", getpid(),
                counter_log[slot], err ? strerror(err) : "", n);
}

/* The signals belong to the launcher's main thread (its loop wakes on them). */
static void block_signals(void) {
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
}

/* TTL - 1 with the checksum patched as the kernel's ip_decrease_ttl() (RFC 1624); 0 when the
 * TTL is 0 or 1 and the packet must be dropped. */
static int decrement_ttl(uint8_t *ip) {
    if (ip[8] <= 1)
        return 0;
    ip[8]--;
    uint32_t check = ((uint32_t)ip[10] << 8 | ip[11]) + 0x0100;
    if (check >= 0xFFFF)
        check = (check + 1) & 0xFFFF;
    ip[10] = check >> 8;
    ip[11] = check & 0xFF;
    return 1;
}

/* Read one route-table message into t; 1 done, 0 the launcher shut down, -errno failure. */
static int read_table(int ctl, struct table *t) {
    const uint8_t *msg = t->msg;
    ssize_t n = recv(ctl, t->msg, sizeof t->msg, 0);
    if (n == 0)
        return 0;
    if (n < 0)
        return errno == EAGAIN || errno == EINTR ? 1 : -errno;
    uint32_t count = 0;
    if (n >= 4) {
        memcpy(&count, msg, 4);
        count = ntohl(count);
    }
    if (n < 4 || count > MAX_ROUTES || (size_t)n != 4 + (size_t)count * ROUTE_BYTES) {
        fprintf(stderr, "labctl.datapath.udpproxy[%d]: bad route table message (%zd bytes)\n",
                getpid(), n);
        return 1;
    }
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *e = msg + 4 + i * ROUTE_BYTES;
        uint32_t net, ip;
        memcpy(&net, e, 4);
        memcpy(&ip, e + 8, 4);
        unsigned plen = e[4];
        struct route *r = &t->r[i];
        r->mask = plen ? 0xFFFFFFFFu << (32 - plen) : 0;
        r->net = ntohl(net) & r->mask;
        memset(&r->peer, 0, sizeof r->peer);
        r->peer.sin_family = AF_INET;
        r->peer.sin_port = t->port;
        r->peer.sin_addr.s_addr = ip;
    }
    t->count = count;
    t->last = -2;
    return 1;
}

/* Index of the longest prefix holding dst (host order), -1 none: entries come longest first. */
static int lookup(struct table *t, uint32_t dst) {
    if (t->last != -2 && t->last_dst == dst)
        return t->last;
    int found = -1;
    for (uint32_t i = 0; i < t->count; i++) {
        if ((dst & t->r[i].mask) == t->r[i].net) {
            found = (int)i;
            break;
        }
    }
    t->last_dst = dst;
    t->last = found;
    return found;
}

/* Ones' complement sum of len bytes as big-endian 16-bit words, added to `sum` (a value in
 * that order) and folded. Summed as native 32-bit words into 64 bits for speed: the ones'
 * complement sum commutes with byte swapping (RFC 1071), so one swap at the end suffices. */
static uint16_t csum_add(const uint8_t *p, size_t len, uint32_t sum) {
    uint64_t acc = 0;
    for (; len >= 4; p += 4, len -= 4) {
        uint32_t w;
        memcpy(&w, p, 4);
        acc += w;
    }
    if (len >= 2) {
        uint16_t w;
        memcpy(&w, p, 2);
        acc += w;
        p += 2;
        len -= 2;
    }
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (len)
        acc += *p; /* the high byte of a big-endian word, i.e. the low byte here */
#else
    if (len)
        acc += (uint32_t)*p << 8;
#endif
    while (acc >> 16)
        acc = (acc & 0xFFFF) + (acc >> 16);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    acc = ((acc & 0xFF) << 8) | (acc >> 8);
#endif
    acc += sum;
    while (acc >> 16)
        acc = (acc & 0xFFFF) + (acc >> 16);
    return (uint16_t)acc;
}

static void put16(uint8_t *p, uint16_t v) {
    p[0] = v >> 8;
    p[1] = v & 0xFF;
}

/* The IPv4 header checksum of ip (20 bytes, no options here or IHL*4 bytes), filled in. */
static void ip_checksum(uint8_t *ip) {
    size_t ihl = (size_t)(ip[0] & 0x0F) * 4;
    put16(ip + 10, 0);
    put16(ip + 10, (uint16_t)~csum_add(ip, ihl, 0));
}

struct sender {
    int sock, gso;
    unsigned long long *counters;
};

static ssize_t send_once(struct sender *s, const uint8_t *buf, size_t len, uint16_t seg,
                         const struct sockaddr_in *peer) {
    struct iovec iov = {(void *)buf, len};
    union {
        char raw[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } control;
    struct msghdr msg = {.msg_name = (void *)peer, .msg_namelen = sizeof *peer,
                         .msg_iov = &iov, .msg_iovlen = 1};
    if (len > seg) {
        msg.msg_control = control.raw;
        msg.msg_controllen = sizeof control.raw;
        struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_UDP;
        cm->cmsg_type = UDP_SEGMENT;
        cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        memcpy(CMSG_DATA(cm), &seg, sizeof seg);
    }
    return sendmsg(s->sock, &msg, 0);
}

/* Send buf[:len] to peer as datagrams of `seg` bytes (the last may be shorter). */
static void send_batch(struct sender *s, const uint8_t *buf, size_t len, uint16_t seg,
                       const struct sockaddr_in *peer) {
    if (!s->gso && len > seg) {
        for (size_t off = 0; off < len; off += seg)
            send_batch(s, buf + off, len - off < seg ? len - off : seg, seg, peer);
        return;
    }
    for (;;) {
        if (send_once(s, buf, len, seg, peer) >= 0) {
            s->counters[C_TX] += (len + seg - 1) / seg;
            return;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN) {
            struct pollfd p = {s->sock, POLLOUT, 0};
            if (poll(&p, 1, SNDBUF_WAIT_MS) > 0)
                continue;
            count_error(s->counters, C_SNDBUF, 0);
            return;
        }
        if ((errno == EIO || errno == EINVAL) && s->gso && len > seg) {
            /* No checksum offload on the route's device (or an old kernel): no GSO here. */
            fprintf(stderr, "labctl.datapath.udpproxy[%d]: UDP GSO unavailable (%s); sending "
                    "one datagram per packet\n", getpid(), strerror(errno));
            s->gso = 0;
            send_batch(s, buf, len, seg, peer);
            return;
        }
        count_error(s->counters, C_SEND, errno);
        return;
    }
}

/* The datagrams gathered for one GSO send: all to `peer`, all `seg` bytes but the last. */
struct batch {
    struct sender s;
    uint8_t *buf;
    size_t off, seg;
    unsigned count;
    const struct sockaddr_in *peer;
};

static void batch_flush(struct batch *b) {
    if (b->off)
        send_batch(&b->s, b->buf, b->off, (uint16_t)b->seg, b->peer);
    b->off = b->count = 0;
}

/* Where the next datagram of n bytes to peer goes; sends what is gathered if it can't join:
 * another peer, or longer than the first (UDP_SEGMENT: only the last may be shorter). */
static uint8_t *batch_slot(struct batch *b, size_t n, const struct sockaddr_in *peer) {
    if (b->off && (peer != b->peer || n > b->seg))
        batch_flush(b);
    return b->buf + b->off;
}

/* The datagram of n bytes written at batch_slot() is complete. */
static void batch_commit(struct batch *b, size_t n, const struct sockaddr_in *peer) {
    if (!b->off) {
        b->peer = peer;
        b->seg = n;
    }
    b->off += n;
    b->count++;
    if (n < b->seg || b->off + b->seg > GSO_BYTES || b->count == GSO_SEGMENTS)
        batch_flush(b);
}

/* Cut a TCP packet the kernel handed over unsegmented (TSO: gso_size bytes of payload per
 * segment) into the segments it would have sent, straight into the batch: per segment the IP
 * total length, a consecutive IP ID and the header checksum; the TCP sequence number, FIN and
 * PSH on the last segment only, CWR on the first only, and the full TCP checksum (the kernel
 * left it to "hardware": this is the hardware). 0 if the packet is malformed. */
static int segment_tcp(struct batch *b, uint8_t *pkt, size_t n, size_t mss,
                       const struct sockaddr_in *peer) {
    size_t ihl = (size_t)(pkt[0] & 0x0F) * 4;
    if (ihl < 20 || n < ihl + 20 || pkt[9] != 6 || !mss)
        return 0;
    size_t hlen = ihl + (size_t)(pkt[ihl + 12] >> 4) * 4;
    if (hlen < ihl + 20 || hlen >= n)
        return 0;
    uint32_t seq0;
    memcpy(&seq0, pkt + ihl + 4, 4);
    seq0 = ntohl(seq0);
    uint16_t id0 = (uint16_t)(pkt[4] << 8 | pkt[5]);
    uint8_t flags = pkt[ihl + 13];
    size_t total = n - hlen;
    for (size_t done = 0, i = 0; done < total; i++) {
        size_t len = total - done < mss ? total - done : mss;
        size_t seglen = hlen + len;
        uint8_t *out = batch_slot(b, seglen, peer);
        memcpy(out, pkt, hlen);
        memcpy(out + hlen, pkt + hlen + done, len);
        put16(out + 2, (uint16_t)seglen);
        put16(out + 4, (uint16_t)(id0 + i));
        ip_checksum(out);
        uint8_t *tcp = out + ihl;
        uint32_t seq = htonl(seq0 + (uint32_t)done);
        memcpy(tcp + 4, &seq, 4);
        uint8_t f = flags;
        if (i)
            f &= (uint8_t)~0x80; /* CWR */
        if (done + len < total)
            f &= (uint8_t)~(0x01 | TCP_PSH); /* FIN, PSH */
        tcp[13] = f;
        put16(tcp + 16, 0);
        uint16_t pseudo = csum_add(out + 12, 8, 6 + (uint32_t)(seglen - ihl));
        put16(tcp + 16, (uint16_t)~csum_add(tcp, seglen - ihl, pseudo));
        batch_commit(b, seglen, peer);
        done += len;
    }
    return 1;
}

/* Fill in a checksum the kernel left partial (offloaded): the field at csum_start +
 * csum_offset holds the pseudo-header sum; the sum from csum_start to the end completes it. */
static int finish_checksum(uint8_t *pkt, size_t n, const struct vnet_hdr *vh) {
    size_t start = vh->csum_start, at = start + vh->csum_offset;
    if (at + 2 > n)
        return 0;
    uint16_t check = (uint16_t)~csum_add(pkt + start, n - start, 0);
    if (check == 0 && pkt[9] == 17)
        check = 0xFFFF; /* UDP: 0 would mean "no checksum" */
    put16(pkt + at, check);
    return 1;
}

/* TUN -> peers until the launcher shuts the control socket: 0, or -errno on a failure.
 *
 * The device has checksum and TCP segmentation offload on (TUNSETOFFLOAD by the launcher), so
 * one read can return a TCP packet of up to 64 KB, and the pod's stack, the node's forwarding
 * and the TUN queue handle one packet where they would otherwise handle ~45. It is cut here
 * into MTU-sized segments, each leaving as its own datagram, so the wire is the same as
 * without the offload. */
int labctl_udp_tun_to_udp(int tun, int sock, int ctl, int port,
                          unsigned long long *counters) {
    block_signals();
    struct table *t = calloc(1, sizeof *t);
    uint8_t *in = malloc(MAX_PKT);
    struct batch b = {{sock, 1, counters}, malloc(GSO_BYTES + MAX_PKT), 0, 0, 0, NULL};
    int rc = 0;
    if (!t || !in || !b.buf) {
        rc = -ENOMEM;
        goto out;
    }
    t->port = htons((uint16_t)port);
    t->last = -2;
    struct pollfd p[2] = {{tun, POLLIN, 0}, {ctl, POLLIN, 0}};
    for (;;) {
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            goto out;
        }
        if (p[1].revents) {
            rc = read_table(ctl, t);
            if (rc <= 0)
                goto out;
            rc = 0;
        }
        if (p[0].revents & (POLLERR | POLLNVAL)) {
            rc = -EBADF;
            goto out;
        }
        if (!(p[0].revents & POLLIN))
            continue;
        /* Drain the TUN; consecutive datagrams to one peer leave in one GSO send. */
        for (;;) {
            struct vnet_hdr vh;
            struct iovec iov[2] = {{&vh, sizeof vh}, {in, MAX_PKT}};
            ssize_t got = readv(tun, iov, 2);
            if (got < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN)
                    break;
                rc = -errno;
                goto out;
            }
            if (got < (ssize_t)sizeof vh + 20 || in[0] >> 4 != 4)
                continue;
            size_t n = (size_t)got - sizeof vh;
            uint32_t dst;
            memcpy(&dst, in + 16, 4);
            int idx = lookup(t, ntohl(dst));
            if (idx < 0) {
                counters[C_NO_ROUTE]++;
                send(ctl, in, n, MSG_DONTWAIT);
                continue;
            }
            if (!decrement_ttl(in)) {
                counters[C_TTL_OUT]++;
                continue;
            }
            const struct sockaddr_in *peer = &t->r[idx].peer;
            if ((vh.gso_type & 0x7F) == VNET_GSO_TCPV4) {
                if (!segment_tcp(&b, in, n, vh.gso_size, peer))
                    counters[C_MALFORMED]++;
                continue;
            }
            if (vh.gso_type || ((vh.flags & VNET_F_NEEDS_CSUM) && !finish_checksum(in, n, &vh))) {
                counters[C_MALFORMED]++; /* no other offload is enabled */
                continue;
            }
            memcpy(batch_slot(&b, n, peer), in, n);
            batch_commit(&b, n, peer);
        }
        batch_flush(&b);
    }
out:
    free(b.buf);
    free(in);
    free(t);
    return rc;
}

/* UDP -> TUN, one write per packet would push each 1.4 KB segment through the node's whole
 * receive path (forwarding, netfilter, the bridge, the pod's TCP) on its own, which is where
 * this direction spends its time. So consecutive in-order segments of one TCP flow are merged
 * into one packet written with a virtio_net_hdr that marks it as TCPv4 GSO of gso_size bytes:
 * the kernel handles it like a GRO aggregate, as it does the 64 KB packets of kernel VXLAN,
 * and splits it again only if it has to leave through a device. The rules are those of the
 * kernel's tcp_gro_receive(): same addresses, ports, TOS, TTL, DF, ACK number, window and TCP
 * options; only ACK/PSH set; sequence numbers back to back; all segments as long as the first
 * except a shorter last one; PSH ends the aggregate. The merged packet's TCP checksum is left
 * to the kernel as CHECKSUM_PARTIAL (flags NEEDS_CSUM); each segment's integrity was checked
 * by the UDP checksum of the datagram that carried it. */
struct coalescer {
    int tun;
    unsigned long long *counters;
    size_t len, hlen, mss; /* len 0: nothing pending */
    unsigned segs;
    uint32_t next_seq;
    int closed; /* a short segment or PSH: no more may follow */
    uint8_t pkt[65535];
};

static void tun_write(struct coalescer *c, const struct vnet_hdr *vh, const uint8_t *pkt,
                      size_t len) {
    struct iovec iov[2] = {{(void *)vh, sizeof *vh}, {(void *)pkt, len}};
    if (writev(c->tun, iov, 2) < 0)
        count_error(c->counters, C_TUN_WRITE, errno);
}

/* Write the pending packet, as a GSO aggregate if it holds more than one segment. */
static void flush(struct coalescer *c) {
    struct vnet_hdr vh = {0};
    if (!c->len)
        return;
    if (c->segs > 1) {
        uint8_t *ip = c->pkt;
        put16(ip + 2, (uint16_t)c->len);
        ip_checksum(ip);
        /* CHECKSUM_PARTIAL: the field holds the pseudo-header sum, the kernel adds the rest. */
        put16(ip + 20 + 16, csum_add(ip + 12, 8, 6 + (uint32_t)(c->len - 20)));
        vh = (struct vnet_hdr){VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4, (uint16_t)c->hlen,
                               (uint16_t)c->mss, 20, 16};
    }
    tun_write(c, &vh, c->pkt, c->len);
    c->len = 0;
}

/* Header length (IP + TCP) if pkt is a TCP segment that may be merged, else 0. */
static size_t mergeable(const uint8_t *pkt, size_t n) {
    if (n < 40 || pkt[0] != 0x45 || pkt[9] != 6 || ((size_t)pkt[2] << 8 | pkt[3]) != n)
        return 0;
    if ((pkt[6] & 0x3F) || pkt[7]) /* MF or a fragment offset */
        return 0;
    size_t hlen = 20 + (size_t)(pkt[32] >> 4) * 4;
    uint8_t flags = pkt[33];
    if (hlen < 40 || hlen >= n || (flags & ~(TCP_ACK | TCP_PSH)) || !(flags & TCP_ACK))
        return 0;
    return hlen;
}

static uint32_t seq_of(const uint8_t *pkt) {
    uint32_t seq;
    memcpy(&seq, pkt + 24, 4);
    return ntohl(seq);
}

/* Hand one inner packet (TTL already decremented) towards the TUN. */
static void deliver(struct coalescer *c, const uint8_t *pkt, size_t n) {
    size_t hlen = mergeable(pkt, n);
    size_t payload = n - hlen;
    if (hlen && c->len && !c->closed && hlen == c->hlen && payload <= c->mss &&
        c->len + payload <= sizeof c->pkt && seq_of(pkt) == c->next_seq &&
        pkt[1] == c->pkt[1] && pkt[6] == c->pkt[6] && pkt[8] == c->pkt[8] &&
        !memcmp(pkt + 12, c->pkt + 12, 8) &&    /* addresses */
        !memcmp(pkt + 20, c->pkt + 20, 4) &&    /* ports */
        !memcmp(pkt + 28, c->pkt + 28, 5) &&    /* ACK number, data offset */
        !memcmp(pkt + 34, c->pkt + 34, 2) &&    /* window */
        !memcmp(pkt + 40, c->pkt + 40, hlen - 40)) { /* options */
        memcpy(c->pkt + c->len, pkt + hlen, payload);
        c->len += payload;
        c->segs++;
        c->next_seq += (uint32_t)payload;
        if (pkt[33] & TCP_PSH) {
            c->pkt[33] |= TCP_PSH;
            c->closed = 1;
        }
        if (payload < c->mss)
            c->closed = 1;
        return;
    }
    flush(c);
    if (!hlen) {
        struct vnet_hdr vh = {0};
        tun_write(c, &vh, pkt, n);
        return;
    }
    memcpy(c->pkt, pkt, n);
    c->len = n;
    c->hlen = hlen;
    c->mss = payload;
    c->segs = 1;
    c->next_seq = seq_of(pkt) + (uint32_t)payload;
    c->closed = (pkt[33] & TCP_PSH) != 0;
}

/* Peers -> TUN until the launcher shuts the control socket: 0, or -errno on a failure. */
int labctl_udp_udp_to_tun(int sock, int tun, int ctl, unsigned long long *counters) {
    block_signals();
    uint8_t *bufs = malloc((size_t)RX_MSGS * MAX_PKT);
    struct coalescer *c = malloc(sizeof *c);
    if (!bufs || !c) {
        free(bufs);
        free(c);
        return -ENOMEM;
    }
    c->tun = tun;
    c->counters = counters;
    c->len = 0;
    struct mmsghdr msgs[RX_MSGS];
    struct iovec iovs[RX_MSGS];
    union {
        char raw[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } controls[RX_MSGS];
    /* The launcher's shutdown shows here as POLLRDHUP; POLLIN on ctl is tun_to_udp's. */
    struct pollfd p[2] = {{sock, POLLIN, 0}, {ctl, POLLRDHUP, 0}};
    int rc = 0;
    for (;;) {
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            break;
        }
        if (p[1].revents)
            break;
        if (!(p[0].revents & POLLIN))
            continue;
        memset(msgs, 0, sizeof msgs);
        for (int i = 0; i < RX_MSGS; i++) {
            iovs[i] = (struct iovec){bufs + (size_t)i * MAX_PKT, MAX_PKT};
            msgs[i].msg_hdr.msg_iov = &iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_control = controls[i].raw;
            msgs[i].msg_hdr.msg_controllen = sizeof controls[i].raw;
        }
        int got = recvmmsg(sock, msgs, RX_MSGS, MSG_DONTWAIT, NULL);
        if (got < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            rc = -errno;
            break;
        }
        for (int i = 0; i < got; i++) {
            uint8_t *data = iovs[i].iov_base;
            size_t len = msgs[i].msg_len, seg = len;
            /* With UDP_GRO one message may hold several same-size datagrams. */
            for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msgs[i].msg_hdr); cm;
                 cm = CMSG_NXTHDR(&msgs[i].msg_hdr, cm)) {
                if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
                    int size;
                    memcpy(&size, CMSG_DATA(cm), sizeof size);
                    if (size > 0)
                        seg = (size_t)size;
                }
            }
            for (size_t off = 0; off < len; off += seg) {
                uint8_t *pkt = data + off;
                size_t n = len - off < seg ? len - off : seg;
                if (n < 20 || pkt[0] >> 4 != 4) {
                    count_error(counters, C_RUNT, 0);
                    continue;
                }
                if (!decrement_ttl(pkt)) {
                    counters[C_TTL_IN]++;
                    continue;
                }
                counters[C_RX]++;
                deliver(c, pkt, n);
            }
        }
        /* Nothing waits for a later batch: what this one merged goes out now. */
        flush(c);
    }
    free(c);
    free(bufs);
    return rc;
}
