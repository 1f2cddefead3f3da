// SPDX-License-Identifier: GPL-2.0
/*
 * IP-in-IP at kernel speed without the ipip module: two tc (clsact) programs.
 *
 * ipip_encap, on the egress of the node's tunnel device (tunl0 / flannel.ipip, an L3 device):
 *   the packet the routing table sent to the tunnel gets an outer IPv4 header, protocol 4,
 *   from this node's IP to the next hop of the route that chose the tunnel (the "via <node>"
 *   of `10.244.x.0/26 via <node> dev tunl0 onlink`), found with bpf_fib_lookup, as the
 *   kernel's NBMA tunnel (remote any) takes rt_nexthop(); then it leaves through the underlay
 *   device with bpf_redirect_neigh (route + ARP for the outer destination).
 * ipip_decap, on the ingress of the underlay device: IP protocol 4 addressed to this node
 *   from a known node loses its outer header and is handed to the tunnel device's ingress, so
 *   the inner packet arrives on tunl0 as it would from the kernel's ipip_rcv(). IPIP from any
 *   other host is dropped (Calico drops IPIP from non-nodes).
 *
 * Outer header as ipip_tunnel_xmit() writes it for a "ttl inherit nopmtudisc" tunnel: TTL and
 * DF copied from the inner packet, DSCP 0, ECN encapsulated per RFC 6040 (CE sent as ECT(0)),
 * a fresh IP ID. GSO packets stay GSO (SKB_GSO_IPXIP4, the MSS unchanged) and are segmented
 * where the kernel's tunnel would segment them.
 *
 * The loader (labctl/datapath/bpf/__init__.py) fills two maps: ipip_config (this node's IP,
 * the underlay and tunnel ifindexes) and ipip_peers (the node IPs IPIP is accepted from).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#ifndef AF_INET
#define AF_INET 2
#endif
#define IP_DF 0x4000
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define ECN_MASK 3
#define ECN_CE 3
#define ECN_ECT0 2

struct config {
	__be32 local_ip;  /* this node's underlay address: the outer source */
	__u32 underlay;   /* ifindex of the underlay device (eth0) */
	__u32 tunnel;     /* ifindex of the tunnel device (tunl0 / flannel.ipip) */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} ipip_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __be32);  /* a peer node's IP */
	__type(value, __u32); /* unused (1) */
} ipip_peers SEC(".maps");

/* Counters the loader reads for `status`: index = enum stat. */
enum stat { ENCAP, DECAP, NO_ROUTE, UNKNOWN_PEER, ERRORS, NSTATS };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NSTATS);
	__type(key, __u32);
	__type(value, __u64);
} ipip_stats SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&ipip_stats, &which);

	if (v)
		*v += 1;
}

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

SEC("tc/encap")
int ipip_encap(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&ipip_config, &zero);
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct iphdr *inner = data;
	struct bpf_fib_lookup fib = {};
	struct iphdr outer = {};
	__u8 ecn;
	long rc;

	if (!cfg || !cfg->local_ip)
		return TC_ACT_SHOT;
	/* The tunnel carries IPv4 only, as tunl0 does. */
	if (skb->protocol != bpf_htons(ETH_P_IP) || (void *)(inner + 1) > end)
		return TC_ACT_SHOT;

	/* The route that sent the packet here: its gateway is the peer node (remote "any"). */
	fib.family = AF_INET;
	fib.ifindex = skb->ifindex;
	fib.ipv4_src = inner->saddr;
	fib.ipv4_dst = inner->daddr;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib),
			    BPF_FIB_LOOKUP_DIRECT | BPF_FIB_LOOKUP_OUTPUT | BPF_FIB_LOOKUP_SKIP_NEIGH);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS || fib.ifindex != skb->ifindex || !fib.ipv4_dst) {
		count(NO_ROUTE);
		return TC_ACT_SHOT;
	}

	ecn = inner->tos & ECN_MASK;
	outer.version = 4;
	outer.ihl = 5;
	outer.tos = ecn == ECN_CE ? ECN_ECT0 : ecn;
	outer.tot_len = bpf_htons(skb->len + sizeof(outer));
	outer.id = (__be16)bpf_get_prandom_u32();
	outer.frag_off = inner->frag_off & bpf_htons(IP_DF);
	outer.ttl = inner->ttl;
	outer.protocol = IPPROTO_IPIP;
	outer.saddr = cfg->local_ip;
	outer.daddr = fib.ipv4_dst;
	outer.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&outer, sizeof(outer), 0));

	/* An L3 skb needs a link-layer header to be redirected into an Ethernet device
	 * (bpf_redirect_neigh fills it in from the neighbour table); the outer header goes
	 * between the two, and GSO keeps the inner MSS so segments fill the underlay MTU. */
	if (bpf_skb_change_head(skb, ETH_HLEN, 0) ||
	    bpf_skb_adjust_room(skb, sizeof(outer), BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_FIXED_GSO)) {
		count(ERRORS);
		return TC_ACT_SHOT;
	}
	__be16 proto = bpf_htons(ETH_P_IP);
	if (bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_proto), &proto, sizeof(proto), 0) ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, &outer, sizeof(outer), 0)) {
		count(ERRORS);
		return TC_ACT_SHOT;
	}
	count(ENCAP);
	return bpf_redirect_neigh(cfg->underlay, 0, 0, 0);
}

SEC("tc/decap")
int ipip_decap(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&ipip_config, &zero);
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *outer = (void *)(eth + 1);
	struct iphdr *inner = (void *)(outer + 1);
	__be32 saddr;

	if (!cfg || (void *)(outer + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (outer->protocol != IPPROTO_IPIP || outer->daddr != cfg->local_ip)
		return TC_ACT_OK;
	saddr = outer->saddr;
	if (!bpf_map_lookup_elem(&ipip_peers, &saddr)) {
		count(UNKNOWN_PEER);
		return TC_ACT_SHOT;
	}
	/* Outer options or fragments: the kernel would reassemble first; this program doesn't,
	 * and with DF copied from the inner packet and the pod MTU leaving room for the outer
	 * header, the lab's traffic never needs it. */
	if (outer->ihl != 5 || (outer->frag_off & bpf_htons(IP_MF | IP_OFFSET)) ||
	    (void *)(inner + 1) > end || inner->version != 4) {
		count(ERRORS);
		return TC_ACT_SHOT;
	}
	/* RFC 6040 decapsulation: outer CE marks the inner packet CE, or drops a Not-ECT one. */
	if ((outer->tos & ECN_MASK) == ECN_CE && (inner->tos & ECN_MASK) != ECN_CE) {
		__u16 old, new;

		if ((inner->tos & ECN_MASK) == 0) {
			count(ERRORS);
			return TC_ACT_SHOT;
		}
		old = *(__u16 *)inner;
		((__u8 *)inner)[1] |= ECN_CE;
		new = *(__u16 *)inner;
		bpf_l3_csum_replace(skb, ETH_HLEN + sizeof(*outer) + offsetof(struct iphdr, check),
				    old, new, sizeof(new));
	}
	if (bpf_skb_adjust_room(skb, -(__s32)sizeof(struct iphdr), BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO)) {
		count(ERRORS);
		return TC_ACT_SHOT;
	}
	count(DECAP);
	/* Arrive on the tunnel device, as from ipip_rcv(): tcpdump -i tunl0 shows the inner
	 * packet, and the reverse path of its source is the tunnel route. */
	return bpf_redirect(cfg->tunnel, BPF_F_INGRESS);
}

char LICENSE[] SEC("license") = "GPL";
