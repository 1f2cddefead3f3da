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
#define RX_MSGS 16
#define MAX_ROUTES 4096
#define ROUTE_BYTES 12
/* How long a full send buffer may hold the TUN reader before the batch is dropped: waiting
 * pushes back on TCP through the TUN queue; dropping costs a retransmit. */
#define SNDBUF_WAIT_MS 100

/* Counter slots shared with the launcher (udpproxy.py COUNTERS, same order). Each slot is
 * written by one thread only. */
enum {
    C_TX, C_RX, C_NO_ROUTE, C_TTL_OUT, C_TTL_IN, C_SNDBUF, C_SEND, C_RUNT, C_TUN_WRITE,
    C_NCOUNTERS
};
static const char *const counter_log[C_NCOUNTERS] = {
    NULL, NULL, NULL, NULL, NULL,
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

/* TUN -> peers until the launcher shuts the control socket: 0, or -errno on a failure. */
int labctl_udp_tun_to_udp(int tun, int sock, int ctl, int port,
                          unsigned long long *counters) {
    block_signals();
    struct table *t = calloc(1, sizeof *t);
    uint8_t *buf = malloc(GSO_BYTES + MAX_PKT);
    int rc = 0;
    if (!t || !buf) {
        rc = -ENOMEM;
        goto out;
    }
    t->port = htons((uint16_t)port);
    t->last = -2;
    struct sender s = {sock, 1, counters};
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
        /* Packets are read back to back into buf. While they go to the same peer and none is
         * longer than the first, they form one GSO batch; a shorter one can only end it
         * (UDP_SEGMENT: all segments but the last have the same size). */
        size_t off = 0, seg = 0;
        unsigned count = 0;
        const struct sockaddr_in *batch_peer = NULL;
        for (;;) {
            ssize_t n = read(tun, buf + off, MAX_PKT);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN)
                    break;
                rc = -errno;
                goto out;
            }
            uint8_t *pkt = buf + off;
            if (n < 20 || pkt[0] >> 4 != 4)
                continue;
            uint32_t dst;
            memcpy(&dst, pkt + 16, 4);
            int idx = lookup(t, ntohl(dst));
            if (idx < 0) {
                counters[C_NO_ROUTE]++;
                send(ctl, pkt, (size_t)n, MSG_DONTWAIT);
                continue;
            }
            if (!decrement_ttl(pkt)) {
                counters[C_TTL_OUT]++;
                continue;
            }
            const struct sockaddr_in *peer = &t->r[idx].peer;
            if (off && (peer != batch_peer || (size_t)n > seg)) {
                send_batch(&s, buf, off, (uint16_t)seg, batch_peer);
                memmove(buf, pkt, (size_t)n);
                off = count = 0;
            }
            if (!off) {
                batch_peer = peer;
                seg = (size_t)n;
            }
            off += (size_t)n;
            count++;
            if ((size_t)n < seg || off + seg > GSO_BYTES || count == GSO_SEGMENTS) {
                send_batch(&s, buf, off, (uint16_t)seg, batch_peer);
                off = count = 0;
            }
        }
        if (off)
            send_batch(&s, buf, off, (uint16_t)seg, batch_peer);
    }
out:
    free(buf);
    free(t);
    return rc;
}

/* Peers -> TUN until the launcher shuts the control socket: 0, or -errno on a failure. */
int labctl_udp_udp_to_tun(int sock, int tun, int ctl, unsigned long long *counters) {
    block_signals();
    uint8_t *bufs = malloc((size_t)RX_MSGS * MAX_PKT);
    if (!bufs)
        return -ENOMEM;
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
                if (write(tun, pkt, n) < 0)
                    count_error(counters, C_TUN_WRITE, errno);
                else
                    counters[C_RX]++;
            }
        }
    }
    free(bufs);
    return rc;
}
