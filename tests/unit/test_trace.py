"""Unit tests for labctl.trace: the walk replayed from kernel state recorded on real labs
(flannel-vxlan on default, calico-bgp on default, flannel-host-gw across router r1 on
cross-subnet, a Service and masquerading on services), kube-proxy's DNAT and the nodes'
masquerade as the walk reads them, and the per-hop capture comparison."""

from __future__ import annotations

import json
from functools import cache
from ipaddress import IPv4Network
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from labctl.checker import index_packets
from labctl.modes import get_mode
from labctl.plan import Plan, underlay_mac
from labctl.policy.model import NamedPort, NetworkPolicy, PodInfo
from labctl.render import render
from labctl.services import proxy_iptables
from labctl.services.endpoints import compute_slices
from labctl.services.model import Service, allocate
from labctl.store import PodRecord, Store, from_topology
from labctl.topology import load_topology
from labctl.trace.capture import compare
from labctl.trace.walk import (
    Hop,
    Json,
    NoRoute,
    TraceInputError,
    Walk,
    iptables_dnat,
    nft_dnat,
    postrouting_nat,
    resolve_endpoint,
    walk,
)

# ---- recorded kernel state ----
#
# What LiveReader answered on real labs (labctl up MODE -t TOPOLOGY, then the traces below),
# trimmed to the fields the walk reads: devices (name, kind, MAC, MTU, master, VXLAN id,
# port and local, IPv4 addresses), neighbours with a MAC, FDB entries (multicast left out),
# the route lookups ("NS DST SRC IIF" -> the FIB entry), nft tables (kube-proxy: the
# service-ips map and the service and endpoint chains; calico: present or not) and the nat
# rules (iptables-save -t nat, -A lines split into arguments).

# flannel-vxlan on default.yaml: web-1 -> web-3 (tcp), web-1 -> db-1 (tcp), node1 -> web-1.
FLANNEL_VXLAN = """
{"fdb":{"master":[{"dst":"10.0.0.33","ifname":"flannel.1","mac":"0e:07:c2:80:9a:74"},{
"dst":"10.0.0.32","ifname":"flannel.1","mac":"0e:c2:39:5c:ad:5e"},{"ifname":"cni0",
"mac":"0e:fb:90:90:ff:61","master":"cni0"},{"ifname":"veth85dffee6",
"mac":"0e:9e:fa:ef:58:ff","master":"cni0"},{"ifname":"veth85dffee6",
"mac":"5a:3e:dd:ff:5d:c1","master":"cni0"},{"ifname":"vethc1d02a88",
"mac":"0e:0a:10:ed:7e:f6","master":"cni0"},{"ifname":"vethc1d02a88",
"mac":"52:0c:60:fe:dd:1d","master":"cni0"}],"node1":[{"dst":"10.0.0.33",
"ifname":"flannel.1","mac":"0e:07:c2:80:9a:74"},{"dst":"10.0.0.31","ifname":"flannel.1",
"mac":"0e:7f:9a:08:ec:eb"},{"ifname":"cni0","mac":"0e:50:05:bc:5a:21","master":"cni0"},{
"ifname":"veth8d8d04a1","mac":"0e:5c:15:b1:74:27","master":"cni0"},{"ifname":"veth8d8d04a1",
"mac":"c6:f1:11:2b:25:a3","master":"cni0"},{"ifname":"vethf3e88224",
"mac":"0e:b2:4d:ee:d9:58","master":"cni0"},{"ifname":"vethf3e88224",
"mac":"96:e4:8f:f7:4c:eb","master":"cni0"}],"node2":[{"dst":"10.0.0.32",
"ifname":"flannel.1","mac":"0e:c2:39:5c:ad:5e"},{"dst":"10.0.0.31","ifname":"flannel.1",
"mac":"0e:7f:9a:08:ec:eb"},{"ifname":"cni0","mac":"0e:af:ed:77:92:8b","master":"cni0"},{
"ifname":"vetha11124ff","mac":"0e:a7:94:4f:05:3b","master":"cni0"},{"ifname":"vetha11124ff",
"mac":"f6:02:e3:1e:5d:e1","master":"cni0"},{"ifname":"veth8e7d3f13",
"mac":"0e:82:e9:f6:1d:27","master":"cni0"},{"ifname":"veth8e7d3f13",
"mac":"8a:a4:28:7e:fe:23","master":"cni0"}]},"iptables_nat":{"master":[["-A","POSTROUTING",
"-m","comment","--comment","flanneld masq","-j","FLANNEL-POSTRTG"],["-A","FLANNEL-POSTRTG",
"-m","mark","--mark","0x4000/0x4000","-m","comment","--comment","flanneld masq","-j",
"RETURN"],["-A","FLANNEL-POSTRTG","-s","10.244.0.0/24","-d","10.244.0.0/16","-m","comment",
"--comment","flanneld masq","-j","RETURN"],["-A","FLANNEL-POSTRTG","-s","10.244.0.0/16",
"-d","10.244.0.0/24","-m","comment","--comment","flanneld masq","-j","RETURN"],["-A",
"FLANNEL-POSTRTG","!","-s","10.244.0.0/16","-d","10.244.0.0/24","-m","comment","--comment",
"flanneld masq","-j","RETURN"],["-A","FLANNEL-POSTRTG","-s","10.244.0.0/16","!","-d",
"224.0.0.0/4","-m","comment","--comment","flanneld masq","-j","MASQUERADE",
"--random-fully"],["-A","FLANNEL-POSTRTG","!","-s","10.244.0.0/16","-d","10.244.0.0/16",
"-m","comment","--comment","flanneld masq","-j","MASQUERADE","--random-fully"]],"node1":[[
"-A","POSTROUTING","-m","comment","--comment","flanneld masq","-j","FLANNEL-POSTRTG"],["-A",
"FLANNEL-POSTRTG","-m","mark","--mark","0x4000/0x4000","-m","comment","--comment",
"flanneld masq","-j","RETURN"],["-A","FLANNEL-POSTRTG","-s","10.244.1.0/24","-d",
"10.244.0.0/16","-m","comment","--comment","flanneld masq","-j","RETURN"],["-A",
"FLANNEL-POSTRTG","-s","10.244.0.0/16","-d","10.244.1.0/24","-m","comment","--comment",
"flanneld masq","-j","RETURN"],["-A","FLANNEL-POSTRTG","!","-s","10.244.0.0/16","-d",
"10.244.1.0/24","-m","comment","--comment","flanneld masq","-j","RETURN"],["-A",
"FLANNEL-POSTRTG","-s","10.244.0.0/16","!","-d","224.0.0.0/4","-m","comment","--comment",
"flanneld masq","-j","MASQUERADE","--random-fully"],["-A","FLANNEL-POSTRTG","!","-s",
"10.244.0.0/16","-d","10.244.0.0/16","-m","comment","--comment","flanneld masq","-j",
"MASQUERADE","--random-fully"]],"node2":[["-A","POSTROUTING","-m","comment","--comment",
"flanneld masq","-j","FLANNEL-POSTRTG"],["-A","FLANNEL-POSTRTG","-m","mark","--mark",
"0x4000/0x4000","-m","comment","--comment","flanneld masq","-j","RETURN"],["-A",
"FLANNEL-POSTRTG","-s","10.244.2.0/24","-d","10.244.0.0/16","-m","comment","--comment",
"flanneld masq","-j","RETURN"],["-A","FLANNEL-POSTRTG","-s","10.244.0.0/16","-d",
"10.244.2.0/24","-m","comment","--comment","flanneld masq","-j","RETURN"],["-A",
"FLANNEL-POSTRTG","!","-s","10.244.0.0/16","-d","10.244.2.0/24","-m","comment","--comment",
"flanneld masq","-j","RETURN"],["-A","FLANNEL-POSTRTG","-s","10.244.0.0/16","!","-d",
"224.0.0.0/4","-m","comment","--comment","flanneld masq","-j","MASQUERADE",
"--random-fully"],["-A","FLANNEL-POSTRTG","!","-s","10.244.0.0/16","-d","10.244.0.0/16",
"-m","comment","--comment","flanneld masq","-j","MASQUERADE","--random-fully"]]},"links":{
"default/web-1":[{"addr_info":[{"family":"inet","local":"10.244.0.2","prefixlen":24}],
"address":"0e:9e:fa:ef:58:ff","ifname":"eth0","link_type":"ether","linkinfo":{
"info_kind":"veth"},"mtu":1450}],"default/web-3":[{"addr_info":[{"family":"inet",
"local":"10.244.2.2","prefixlen":24}],"address":"0e:a7:94:4f:05:3b","ifname":"eth0",
"link_type":"ether","linkinfo":{"info_kind":"veth"},"mtu":1450}],"master":[{"addr_info":[{
"family":"inet","local":"10.0.0.31","prefixlen":24}],"address":"0e:61:46:48:aa:1b",
"ifname":"eth0","link_type":"ether","linkinfo":{"info_kind":"veth"},"mtu":1500},{
"addr_info":[{"family":"inet","local":"10.244.0.0","prefixlen":32}],
"address":"0e:7f:9a:08:ec:eb","ifname":"flannel.1","link_type":"ether","linkinfo":{
"info_data":{"id":1,"link":"eth0","local":"10.0.0.31","port":8472},"info_kind":"vxlan"},
"mtu":1450},{"addr_info":[{"family":"inet","local":"10.244.0.1","prefixlen":24}],
"address":"0e:fb:90:90:ff:61","ifname":"cni0","link_type":"ether","linkinfo":{
"info_kind":"bridge"},"mtu":1450},{"address":"5a:3e:dd:ff:5d:c1","ifname":"veth85dffee6",
"link_type":"ether","linkinfo":{"info_kind":"veth"},"master":"cni0","mtu":1450},{
"address":"52:0c:60:fe:dd:1d","ifname":"vethc1d02a88","link_type":"ether","linkinfo":{
"info_kind":"veth"},"master":"cni0","mtu":1450}],"node1":[{"addr_info":[{"family":"inet",
"local":"10.0.0.32","prefixlen":24}],"address":"0e:42:47:bc:16:71","ifname":"eth0",
"link_type":"ether","linkinfo":{"info_kind":"veth"},"mtu":1500},{"addr_info":[{
"family":"inet","local":"10.244.1.0","prefixlen":32}],"address":"0e:c2:39:5c:ad:5e",
"ifname":"flannel.1","link_type":"ether","linkinfo":{"info_data":{"id":1,"link":"eth0",
"local":"10.0.0.32","port":8472},"info_kind":"vxlan"},"mtu":1450},{"addr_info":[{
"family":"inet","local":"10.244.1.1","prefixlen":24}],"address":"0e:50:05:bc:5a:21",
"ifname":"cni0","link_type":"ether","linkinfo":{"info_kind":"bridge"},"mtu":1450},{
"address":"c6:f1:11:2b:25:a3","ifname":"veth8d8d04a1","link_type":"ether","linkinfo":{
"info_kind":"veth"},"master":"cni0","mtu":1450},{"address":"96:e4:8f:f7:4c:eb",
"ifname":"vethf3e88224","link_type":"ether","linkinfo":{"info_kind":"veth"},"master":"cni0",
"mtu":1450}],"node2":[{"addr_info":[{"family":"inet","local":"10.0.0.33","prefixlen":24}],
"address":"0e:f5:72:a7:43:c9","ifname":"eth0","link_type":"ether","linkinfo":{
"info_kind":"veth"},"mtu":1500},{"addr_info":[{"family":"inet","local":"10.244.2.0",
"prefixlen":32}],"address":"0e:07:c2:80:9a:74","ifname":"flannel.1","link_type":"ether",
"linkinfo":{"info_data":{"id":1,"link":"eth0","local":"10.0.0.33","port":8472},
"info_kind":"vxlan"},"mtu":1450},{"addr_info":[{"family":"inet","local":"10.244.2.1",
"prefixlen":24}],"address":"0e:af:ed:77:92:8b","ifname":"cni0","link_type":"ether",
"linkinfo":{"info_kind":"bridge"},"mtu":1450},{"address":"f6:02:e3:1e:5d:e1",
"ifname":"vetha11124ff","link_type":"ether","linkinfo":{"info_kind":"veth"},"master":"cni0",
"mtu":1450},{"address":"8a:a4:28:7e:fe:23","ifname":"veth8e7d3f13","link_type":"ether",
"linkinfo":{"info_kind":"veth"},"master":"cni0","mtu":1450}],"test/db-1":[{"addr_info":[{
"family":"inet","local":"10.244.0.3","prefixlen":24}],"address":"0e:0a:10:ed:7e:f6",
"ifname":"eth0","link_type":"ether","linkinfo":{"info_kind":"veth"},"mtu":1450}]},
"neighbours":{"default/web-1":[{"dev":"eth0","dst":"10.244.0.3",
"lladdr":"0e:0a:10:ed:7e:f6","state":["REACHABLE"]},{"dev":"eth0","dst":"10.244.0.1",
"lladdr":"0e:fb:90:90:ff:61","state":["REACHABLE"]}],"master":[{"dev":"flannel.1",
"dst":"10.244.2.0","lladdr":"0e:07:c2:80:9a:74","state":["PERMANENT"]},{"dev":"eth0",
"dst":"10.0.0.33","lladdr":"0e:f5:72:a7:43:c9","state":["REACHABLE"]},{"dev":"eth0",
"dst":"10.0.0.32","lladdr":"0e:42:47:bc:16:71","state":["REACHABLE"]},{"dev":"flannel.1",
"dst":"10.244.1.0","lladdr":"0e:c2:39:5c:ad:5e","state":["PERMANENT"]},{"dev":"cni0",
"dst":"10.244.0.2","lladdr":"0e:9e:fa:ef:58:ff","state":["REACHABLE"]}],"node1":[{
"dev":"flannel.1","dst":"10.244.2.0","lladdr":"0e:07:c2:80:9a:74","state":["PERMANENT"]},{
"dev":"flannel.1","dst":"10.244.0.0","lladdr":"0e:7f:9a:08:ec:eb","state":["PERMANENT"]},{
"dev":"eth0","dst":"10.0.0.31","lladdr":"0e:61:46:48:aa:1b","state":["REACHABLE"]}],
"node2":[{"dev":"eth0","dst":"10.0.0.31","lladdr":"0e:61:46:48:aa:1b","state":[
"REACHABLE"]},{"dev":"cni0","dst":"10.244.2.2","lladdr":"0e:a7:94:4f:05:3b","state":[
"REACHABLE"]},{"dev":"flannel.1","dst":"10.244.0.0","lladdr":"0e:7f:9a:08:ec:eb","state":[
"PERMANENT"]},{"dev":"flannel.1","dst":"10.244.1.0","lladdr":"0e:c2:39:5c:ad:5e","state":[
"PERMANENT"]}]},"nft":{"master calico":null,"master kube-proxy":[{"rule":{
"chain":"service-endpoints-check","expr":[{"vmap":{"data":"@no-endpoint-services","key":{
"concat":[{"payload":{"field":"daddr","protocol":"ip"}},{"meta":{"key":"l4proto"}},{
"payload":{"field":"dport","protocol":"th"}}]}}}]}}],"node1 calico":null,
"node2 calico":null,"node2 kube-proxy":[{"rule":{"chain":"service-endpoints-check","expr":[{
"vmap":{"data":"@no-endpoint-services","key":{"concat":[{"payload":{"field":"daddr",
"protocol":"ip"}},{"meta":{"key":"l4proto"}},{"payload":{"field":"dport",
"protocol":"th"}}]}}}]}}]},"route_get":{"default/web-1 10.244.0.2 10.244.1.0 eth0":{
"dev":"eth0","dst":"10.244.0.2","prefsrc":"10.244.0.2","protocol":"kernel","type":"local"},
"default/web-1 10.244.0.3 10.244.0.2 None":{"dev":"eth0","dst":"10.244.0.0/24",
"prefsrc":"10.244.0.2","protocol":"kernel","type":"unicast"},
"default/web-1 10.244.2.2 10.244.0.2 None":{"dev":"eth0","dst":"10.244.0.0/16",
"gateway":"10.244.0.1","prefsrc":"10.244.0.2","protocol":"boot","type":"unicast"},
"default/web-3 10.244.2.2 10.244.0.2 eth0":{"dev":"eth0","dst":"10.244.2.2",
"prefsrc":"10.244.2.2","protocol":"kernel","type":"local"},
"master 10.0.0.31 10.0.0.32 eth0":{"dev":"eth0","dst":"10.0.0.31","prefsrc":"10.0.0.31",
"protocol":"kernel","type":"local"},"master 10.0.0.33 10.0.0.31 None":{"dev":"eth0",
"dst":"10.0.0.0/24","prefsrc":"10.0.0.31","protocol":"kernel","type":"unicast"},
"master 10.244.0.2 10.244.1.0 flannel.1":{"dev":"cni0","dst":"10.244.0.0/24",
"prefsrc":"10.244.0.1","protocol":"kernel","type":"unicast"},
"master 10.244.2.2 10.244.0.2 cni0":{"dev":"flannel.1","dst":"10.244.2.0/24","flags":[
"onlink"],"gateway":"10.244.2.0","protocol":"boot","type":"unicast"},
"node1 10.0.0.31 10.0.0.32 None":{"dev":"eth0","dst":"10.0.0.0/24","prefsrc":"10.0.0.32",
"protocol":"kernel","type":"unicast"},"node1 10.244.0.2 None None":{"dev":"flannel.1",
"dst":"10.244.0.0/24","flags":["onlink"],"gateway":"10.244.0.0","prefsrc":"10.244.1.0",
"protocol":"boot","type":"unicast"},"node2 10.0.0.33 10.0.0.31 eth0":{"dev":"eth0",
"dst":"10.0.0.33","prefsrc":"10.0.0.33","protocol":"kernel","type":"local"},
"node2 10.244.2.2 10.244.0.2 flannel.1":{"dev":"cni0","dst":"10.244.2.0/24",
"prefsrc":"10.244.2.1","protocol":"kernel","type":"unicast"},
"test/db-1 10.244.0.3 10.244.0.2 eth0":{"dev":"eth0","dst":"10.244.0.3",
"prefsrc":"10.244.0.3","protocol":"kernel","type":"local"}}}
"""

# calico-bgp on default.yaml: web-1 -> web-3 (tcp), web-1 -> db-1 (udp).
CALICO_BGP = """
{"iptables_nat":{"master":[["-A","POSTROUTING","-m","comment","--comment",
"cali:O3lYWMrLQYEMJtB5","-j","cali-POSTROUTING"],["-A","cali-POSTROUTING","-m","comment",
"--comment","cali:Z-c7XtVd2Bq7s_hA","-j","cali-nat-outgoing"],["-A","cali-nat-outgoing",
"-s","10.244.0.0/16","!","-d","10.244.0.0/16","-m","comment","--comment",
"cali:flqWnvo8yq4ULQLa","-j","MASQUERADE","--random-fully"]],"node2":[["-A","POSTROUTING",
"-m","comment","--comment","cali:O3lYWMrLQYEMJtB5","-j","cali-POSTROUTING"],["-A",
"cali-POSTROUTING","-m","comment","--comment","cali:Z-c7XtVd2Bq7s_hA","-j",
"cali-nat-outgoing"],["-A","cali-nat-outgoing","-s","10.244.0.0/16","!","-d",
"10.244.0.0/16","-m","comment","--comment","cali:flqWnvo8yq4ULQLa","-j","MASQUERADE",
"--random-fully"]]},"links":{"default/web-1":[{"addr_info":[{"family":"inet",
"local":"10.244.0.2","prefixlen":32}],"address":"0e:9e:fa:ef:58:ff","ifname":"eth0",
"link_type":"ether","linkinfo":{"info_kind":"veth"},"mtu":1500}],"default/web-3":[{
"addr_info":[{"family":"inet","local":"10.244.2.2","prefixlen":32}],
"address":"0e:a7:94:4f:05:3b","ifname":"eth0","link_type":"ether","linkinfo":{
"info_kind":"veth"},"mtu":1500}],"master":[{"addr_info":[{"family":"inet",
"local":"10.0.0.31","prefixlen":24}],"address":"0e:61:46:48:aa:1b","ifname":"eth0",
"link_type":"ether","linkinfo":{"info_kind":"veth"},"mtu":1500},{
"address":"ee:ee:ee:ee:ee:ee","ifname":"cali0761ccbeace","link_type":"ether","linkinfo":{
"info_kind":"veth"},"mtu":1500},{"address":"ee:ee:ee:ee:ee:ee","ifname":"cali44b4014db40",
"link_type":"ether","linkinfo":{"info_kind":"veth"},"mtu":1500}],"node2":[{"addr_info":[{
"family":"inet","local":"10.0.0.33","prefixlen":24}],"address":"0e:f5:72:a7:43:c9",
"ifname":"eth0","link_type":"ether","linkinfo":{"info_kind":"veth"},"mtu":1500},{
"address":"ee:ee:ee:ee:ee:ee","ifname":"cali4448cbddedf","link_type":"ether","linkinfo":{
"info_kind":"veth"},"mtu":1500},{"address":"ee:ee:ee:ee:ee:ee","ifname":"cali9fc425baf24",
"link_type":"ether","linkinfo":{"info_kind":"veth"},"mtu":1500}],"test/db-1":[{"addr_info":[
{"family":"inet","local":"10.244.0.3","prefixlen":32}],"address":"0e:0a:10:ed:7e:f6",
"ifname":"eth0","link_type":"ether","linkinfo":{"info_kind":"veth"},"mtu":1500}]},
"neighbours":{"default/web-1":[],"master":[{"dev":"eth0","dst":"10.0.0.33",
"lladdr":"0e:f5:72:a7:43:c9","state":["REACHABLE"]},{"dev":"cali44b4014db40",
"dst":"10.244.0.3","lladdr":"0e:0a:10:ed:7e:f6","state":["PERMANENT"]},{
"dev":"cali0761ccbeace","dst":"10.244.0.2","lladdr":"0e:9e:fa:ef:58:ff","state":[
"PERMANENT"]},{"dev":"eth0","dst":"10.0.0.32","lladdr":"0e:42:47:bc:16:71","state":[
"REACHABLE"]}],"node2":[{"dev":"cali4448cbddedf","dst":"10.244.2.2",
"lladdr":"0e:a7:94:4f:05:3b","state":["PERMANENT"]},{"dev":"eth0","dst":"10.0.0.32",
"lladdr":"0e:42:47:bc:16:71","state":["REACHABLE"]},{"dev":"cali9fc425baf24",
"dst":"10.244.2.3","lladdr":"0e:82:e9:f6:1d:27","state":["PERMANENT"]},{"dev":"eth0",
"dst":"10.0.0.31","lladdr":"0e:61:46:48:aa:1b","state":["REACHABLE"]}]},"nft":{
"master calico":[],"master kube-proxy":[{"rule":{"chain":"service-endpoints-check","expr":[{
"vmap":{"data":"@no-endpoint-services","key":{"concat":[{"payload":{"field":"daddr",
"protocol":"ip"}},{"meta":{"key":"l4proto"}},{"payload":{"field":"dport",
"protocol":"th"}}]}}}]}}],"node2 calico":[],"node2 kube-proxy":[{"rule":{
"chain":"service-endpoints-check","expr":[{"vmap":{"data":"@no-endpoint-services","key":{
"concat":[{"payload":{"field":"daddr","protocol":"ip"}},{"meta":{"key":"l4proto"}},{
"payload":{"field":"dport","protocol":"th"}}]}}}]}}]},"route_get":{
"default/web-1 10.244.0.3 10.244.0.2 None":{"dev":"eth0","dst":"default",
"gateway":"169.254.1.1","prefsrc":"10.244.0.2","protocol":"boot","type":"unicast"},
"default/web-1 10.244.2.2 10.244.0.2 None":{"dev":"eth0","dst":"default",
"gateway":"169.254.1.1","prefsrc":"10.244.0.2","protocol":"boot","type":"unicast"},
"default/web-3 10.244.2.2 10.244.0.2 eth0":{"dev":"eth0","dst":"10.244.2.2",
"prefsrc":"10.244.2.2","protocol":"kernel","type":"local"},
"master 10.244.0.3 10.244.0.2 cali0761ccbeace":{"dev":"cali44b4014db40","dst":"10.244.0.3",
"protocol":"boot","type":"unicast"},"master 10.244.2.2 10.244.0.2 cali0761ccbeace":{
"dev":"eth0","dst":"10.244.2.0/26","gateway":"10.0.0.33","protocol":"bgp","type":"unicast"},
"node2 10.244.2.2 10.244.0.2 eth0":{"dev":"cali4448cbddedf","dst":"10.244.2.2",
"protocol":"boot","type":"unicast"},"test/db-1 10.244.0.3 10.244.0.2 eth0":{"dev":"eth0",
"dst":"10.244.0.3","prefsrc":"10.244.0.3","protocol":"kernel","type":"local"}}}
"""

# flannel-host-gw on cross-subnet.yaml: web-1 (node1) -> web-3 (node3, behind r1) and
# web-1 -> web-2 (node2, same segment), tcp.
HOST_GW = """
{"fdb":{"node2":[{"ifname":"cni0","mac":"0e:af:ed:77:92:8b","master":"cni0"},{
"ifname":"veth8d8d04a1","mac":"0e:5c:15:b1:74:27","master":"cni0"},{"ifname":"veth8d8d04a1",
"mac":"56:95:3e:98:21:f9","master":"cni0"}]},"iptables_nat":{"node1":[["-A","POSTROUTING",
"-m","comment","--comment","flanneld masq","-j","FLANNEL-POSTRTG"],["-A","FLANNEL-POSTRTG",
"-m","mark","--mark","0x4000/0x4000","-m","comment","--comment","flanneld masq","-j",
"RETURN"],["-A","FLANNEL-POSTRTG","-s","10.244.0.0/24","-d","10.244.0.0/16","-m","comment",
"--comment","flanneld masq","-j","RETURN"],["-A","FLANNEL-POSTRTG","-s","10.244.0.0/16",
"-d","10.244.0.0/24","-m","comment","--comment","flanneld masq","-j","RETURN"],["-A",
"FLANNEL-POSTRTG","!","-s","10.244.0.0/16","-d","10.244.0.0/24","-m","comment","--comment",
"flanneld masq","-j","RETURN"],["-A","FLANNEL-POSTRTG","-s","10.244.0.0/16","!","-d",
"224.0.0.0/4","-m","comment","--comment","flanneld masq","-j","MASQUERADE",
"--random-fully"],["-A","FLANNEL-POSTRTG","!","-s","10.244.0.0/16","-d","10.244.0.0/16",
"-m","comment","--comment","flanneld masq","-j","MASQUERADE","--random-fully"]],"node2":[[
"-A","POSTROUTING","-m","comment","--comment","flanneld masq","-j","FLANNEL-POSTRTG"],["-A",
"FLANNEL-POSTRTG","-m","mark","--mark","0x4000/0x4000","-m","comment","--comment",
"flanneld masq","-j","RETURN"],["-A","FLANNEL-POSTRTG","-s","10.244.1.0/24","-d",
"10.244.0.0/16","-m","comment","--comment","flanneld masq","-j","RETURN"],["-A",
"FLANNEL-POSTRTG","-s","10.244.0.0/16","-d","10.244.1.0/24","-m","comment","--comment",
"flanneld masq","-j","RETURN"],["-A","FLANNEL-POSTRTG","!","-s","10.244.0.0/16","-d",
"10.244.1.0/24","-m","comment","--comment","flanneld masq","-j","RETURN"],["-A",
"FLANNEL-POSTRTG","-s","10.244.0.0/16","!","-d","224.0.0.0/4","-m","comment","--comment",
"flanneld masq","-j","MASQUERADE","--random-fully"],["-A","FLANNEL-POSTRTG","!","-s",
"10.244.0.0/16","-d","10.244.0.0/16","-m","comment","--comment","flanneld masq","-j",
"MASQUERADE","--random-fully"]]},"links":{"default/web-1":[{"addr_info":[{"family":"inet",
"local":"10.244.0.2","prefixlen":24}],"address":"0e:9e:fa:ef:58:ff","ifname":"eth0",
"link_type":"ether","linkinfo":{"info_kind":"veth"},"mtu":1500}],"default/web-2":[{
"addr_info":[{"family":"inet","local":"10.244.1.2","prefixlen":24}],
"address":"0e:5c:15:b1:74:27","ifname":"eth0","link_type":"ether","linkinfo":{
"info_kind":"veth"},"mtu":1500}],"node1":[{"addr_info":[{"family":"inet",
"local":"10.0.0.31","prefixlen":24}],"address":"0e:42:47:bc:16:71","ifname":"eth0",
"link_type":"ether","linkinfo":{"info_kind":"veth"},"mtu":1500},{"addr_info":[{
"family":"inet","local":"10.244.0.1","prefixlen":24}],"address":"0e:50:05:bc:5a:21",
"ifname":"cni0","link_type":"ether","linkinfo":{"info_kind":"bridge"},"mtu":1500},{
"address":"f2:10:b8:b6:11:0c","ifname":"veth85dffee6","link_type":"ether","linkinfo":{
"info_kind":"veth"},"master":"cni0","mtu":1500}],"node2":[{"addr_info":[{"family":"inet",
"local":"10.0.0.32","prefixlen":24}],"address":"0e:f5:72:a7:43:c9","ifname":"eth0",
"link_type":"ether","linkinfo":{"info_kind":"veth"},"mtu":1500},{"addr_info":[{
"family":"inet","local":"10.244.1.1","prefixlen":24}],"address":"0e:af:ed:77:92:8b",
"ifname":"cni0","link_type":"ether","linkinfo":{"info_kind":"bridge"},"mtu":1500},{
"address":"56:95:3e:98:21:f9","ifname":"veth8d8d04a1","link_type":"ether","linkinfo":{
"info_kind":"veth"},"master":"cni0","mtu":1500}],"r1":[{"addr_info":[{"family":"inet",
"local":"10.0.0.1","prefixlen":24}],"address":"0e:11:b7:62:12:c6","ifname":"eth0",
"link_type":"ether","linkinfo":{"info_kind":"veth"},"mtu":1500},{"addr_info":[{
"family":"inet","local":"10.0.1.1","prefixlen":24}],"address":"0e:e2:20:79:c0:9c",
"ifname":"eth1","link_type":"ether","linkinfo":{"info_kind":"veth"},"mtu":1500}]},
"neighbours":{"default/web-1":[],"node1":[],"node2":[]},"nft":{"node1 calico":null,
"node1 kube-proxy":[{"rule":{"chain":"service-endpoints-check","expr":[{"vmap":{
"data":"@no-endpoint-services","key":{"concat":[{"payload":{"field":"daddr",
"protocol":"ip"}},{"meta":{"key":"l4proto"}},{"payload":{"field":"dport",
"protocol":"th"}}]}}}]}}],"node2 calico":null,"node2 kube-proxy":[{"rule":{
"chain":"service-endpoints-check","expr":[{"vmap":{"data":"@no-endpoint-services","key":{
"concat":[{"payload":{"field":"daddr","protocol":"ip"}},{"meta":{"key":"l4proto"}},{
"payload":{"field":"dport","protocol":"th"}}]}}}]}}]},"route_get":{
"default/web-1 10.244.1.2 10.244.0.2 None":{"dev":"eth0","dst":"10.244.0.0/16",
"gateway":"10.244.0.1","prefsrc":"10.244.0.2","protocol":"boot","type":"unicast"},
"default/web-1 10.244.2.2 10.244.0.2 None":{"dev":"eth0","dst":"10.244.0.0/16",
"gateway":"10.244.0.1","prefsrc":"10.244.0.2","protocol":"boot","type":"unicast"},
"default/web-2 10.244.1.2 10.244.0.2 eth0":{"dev":"eth0","dst":"10.244.1.2",
"prefsrc":"10.244.1.2","protocol":"kernel","type":"local"},
"node1 10.244.1.2 10.244.0.2 cni0":{"dev":"eth0","dst":"10.244.1.0/24",
"gateway":"10.0.0.32","protocol":"boot","type":"unicast"},
"node1 10.244.2.2 10.244.0.2 cni0":{"dev":"eth0","dst":"default","gateway":"10.0.0.1",
"protocol":"boot","type":"unicast"},"node2 10.244.1.2 10.244.0.2 eth0":{"dev":"cni0",
"dst":"10.244.1.0/24","prefsrc":"10.244.1.1","protocol":"kernel","type":"unicast"},
"r1 10.244.2.2 10.244.0.2 eth0":{"error":"Network is unreachable"}},"routes":{"r1":[{
"dev":"eth0","dst":"10.0.0.0/24","prefsrc":"10.0.0.1","protocol":"kernel","type":"unicast"},
{"dev":"eth1","dst":"10.0.1.0/24","prefsrc":"10.0.1.1","protocol":"kernel",
"type":"unicast"}]}}
"""

# flannel-vxlan on services.yaml with examples/services/damo.yml applied: web-3 ->
# svc/default/myservice (10.96.0.2:80, endpoints demo2 on master and node1), web-1 ->
# internet (behind r1). The kube-proxy tables of the nodes the packet only passes are left
# empty: they are node2's, and hold no pod address. "pods": the Deployment's pods.
SERVICES = """
{"fdb":{"master":[{"dst":"10.0.0.33","ifname":"flannel.1","mac":"0e:07:c2:80:9a:74"},{
"dst":"10.0.0.32","ifname":"flannel.1","mac":"0e:c2:39:5c:ad:5e"},{"ifname":"cni0",
"mac":"0e:fb:90:90:ff:61","master":"cni0"},{"ifname":"veth85dffee6",
"mac":"0e:9e:fa:ef:58:ff","master":"cni0"},{"ifname":"veth85dffee6",
"mac":"52:d6:64:1b:b7:c2","master":"cni0"},{"ifname":"vethc1d02a88",
"mac":"0e:0a:10:ed:7e:f6","master":"cni0"},{"ifname":"vethc1d02a88",
"mac":"7e:9a:9f:12:89:9e","master":"cni0"},{"ifname":"veth390f690f",
"mac":"0e:b3:4f:d7:71:f4","master":"cni0"},{"ifname":"veth390f690f",
"mac":"66:fc:87:bf:41:a2","master":"cni0"}],"node1":[{"dst":"10.0.0.33",
"ifname":"flannel.1","mac":"0e:07:c2:80:9a:74"},{"dst":"10.0.0.31","ifname":"flannel.1",
"mac":"0e:7f:9a:08:ec:eb"},{"ifname":"cni0","mac":"0e:50:05:bc:5a:21","master":"cni0"},{
"ifname":"veth8d8d04a1","mac":"0e:5c:15:b1:74:27","master":"cni0"},{"ifname":"veth8d8d04a1",
"mac":"96:4d:db:9a:c4:1f","master":"cni0"},{"ifname":"vethf3e88224",
"mac":"0e:b2:4d:ee:d9:58","master":"cni0"},{"ifname":"vethf3e88224",
"mac":"e2:b7:a8:5b:c2:9e","master":"cni0"},{"ifname":"vetha389c016",
"mac":"0e:1b:52:81:a5:b4","master":"cni0"},{"ifname":"vetha389c016",
"mac":"8a:db:4d:06:3c:70","master":"cni0"}],"node2":[{"dst":"10.0.0.32",
"ifname":"flannel.1","mac":"0e:c2:39:5c:ad:5e"},{"dst":"10.0.0.31","ifname":"flannel.1",
"mac":"0e:7f:9a:08:ec:eb"},{"ifname":"cni0","mac":"0e:af:ed:77:92:8b","master":"cni0"},{
"ifname":"vetha11124ff","mac":"0e:a7:94:4f:05:3b","master":"cni0"},{"ifname":"vetha11124ff",
"mac":"3a:5c:8e:4f:4e:cc","master":"cni0"},{"ifname":"veth8e7d3f13",
"mac":"0e:82:e9:f6:1d:27","master":"cni0"},{"ifname":"veth8e7d3f13",
"mac":"1e:62:68:cd:45:32","master":"cni0"}]},"iptables_nat":{"master":[["-A","POSTROUTING",
"-m","comment","--comment","flanneld masq","-j","FLANNEL-POSTRTG"],["-A","FLANNEL-POSTRTG",
"-m","mark","--mark","0x4000/0x4000","-m","comment","--comment","flanneld masq","-j",
"RETURN"],["-A","FLANNEL-POSTRTG","-s","10.244.0.0/24","-d","10.244.0.0/16","-m","comment",
"--comment","flanneld masq","-j","RETURN"],["-A","FLANNEL-POSTRTG","-s","10.244.0.0/16",
"-d","10.244.0.0/24","-m","comment","--comment","flanneld masq","-j","RETURN"],["-A",
"FLANNEL-POSTRTG","!","-s","10.244.0.0/16","-d","10.244.0.0/24","-m","comment","--comment",
"flanneld masq","-j","RETURN"],["-A","FLANNEL-POSTRTG","-s","10.244.0.0/16","!","-d",
"224.0.0.0/4","-m","comment","--comment","flanneld masq","-j","MASQUERADE",
"--random-fully"],["-A","FLANNEL-POSTRTG","!","-s","10.244.0.0/16","-d","10.244.0.0/16",
"-m","comment","--comment","flanneld masq","-j","MASQUERADE","--random-fully"]],"node1":[[
"-A","POSTROUTING","-m","comment","--comment","flanneld masq","-j","FLANNEL-POSTRTG"],["-A",
"FLANNEL-POSTRTG","-m","mark","--mark","0x4000/0x4000","-m","comment","--comment",
"flanneld masq","-j","RETURN"],["-A","FLANNEL-POSTRTG","-s","10.244.1.0/24","-d",
"10.244.0.0/16","-m","comment","--comment","flanneld masq","-j","RETURN"],["-A",
"FLANNEL-POSTRTG","-s","10.244.0.0/16","-d","10.244.1.0/24","-m","comment","--comment",
"flanneld masq","-j","RETURN"],["-A","FLANNEL-POSTRTG","!","-s","10.244.0.0/16","-d",
"10.244.1.0/24","-m","comment","--comment","flanneld masq","-j","RETURN"],["-A",
"FLANNEL-POSTRTG","-s","10.244.0.0/16","!","-d","224.0.0.0/4","-m","comment","--comment",
"flanneld masq","-j","MASQUERADE","--random-fully"],["-A","FLANNEL-POSTRTG","!","-s",
"10.244.0.0/16","-d","10.244.0.0/16","-m","comment","--comment","flanneld masq","-j",
"MASQUERADE","--random-fully"]],"node2":[["-A","POSTROUTING","-m","comment","--comment",
"flanneld masq","-j","FLANNEL-POSTRTG"],["-A","FLANNEL-POSTRTG","-m","mark","--mark",
"0x4000/0x4000","-m","comment","--comment","flanneld masq","-j","RETURN"],["-A",
"FLANNEL-POSTRTG","-s","10.244.2.0/24","-d","10.244.0.0/16","-m","comment","--comment",
"flanneld masq","-j","RETURN"],["-A","FLANNEL-POSTRTG","-s","10.244.0.0/16","-d",
"10.244.2.0/24","-m","comment","--comment","flanneld masq","-j","RETURN"],["-A",
"FLANNEL-POSTRTG","!","-s","10.244.0.0/16","-d","10.244.2.0/24","-m","comment","--comment",
"flanneld masq","-j","RETURN"],["-A","FLANNEL-POSTRTG","-s","10.244.0.0/16","!","-d",
"224.0.0.0/4","-m","comment","--comment","flanneld masq","-j","MASQUERADE",
"--random-fully"],["-A","FLANNEL-POSTRTG","!","-s","10.244.0.0/16","-d","10.244.0.0/16",
"-m","comment","--comment","flanneld masq","-j","MASQUERADE","--random-fully"]]},"links":{
"default/demo2-6945dd9b8d-g72w6":[{"addr_info":[{"family":"inet","local":"10.244.1.4",
"prefixlen":24}],"address":"0e:1b:52:81:a5:b4","ifname":"eth0","link_type":"ether",
"linkinfo":{"info_kind":"veth"},"mtu":1450}],"default/demo2-6945dd9b8d-wvz7x":[{
"addr_info":[{"family":"inet","local":"10.244.0.4","prefixlen":24}],
"address":"0e:b3:4f:d7:71:f4","ifname":"eth0","link_type":"ether","linkinfo":{
"info_kind":"veth"},"mtu":1450}],"default/web-1":[{"addr_info":[{"family":"inet",
"local":"10.244.0.2","prefixlen":24}],"address":"0e:9e:fa:ef:58:ff","ifname":"eth0",
"link_type":"ether","linkinfo":{"info_kind":"veth"},"mtu":1450}],"default/web-3":[{
"addr_info":[{"family":"inet","local":"10.244.2.2","prefixlen":24}],
"address":"0e:a7:94:4f:05:3b","ifname":"eth0","link_type":"ether","linkinfo":{
"info_kind":"veth"},"mtu":1450}],"internet":[{"addr_info":[{"family":"inet",
"local":"192.168.100.10","prefixlen":24}],"address":"0e:7f:86:8a:1c:2b","ifname":"eth0",
"link_type":"ether","linkinfo":{"info_kind":"veth"},"mtu":1500}],"master":[{"addr_info":[{
"family":"inet","local":"10.0.0.31","prefixlen":24}],"address":"0e:61:46:48:aa:1b",
"ifname":"eth0","link_type":"ether","linkinfo":{"info_kind":"veth"},"mtu":1500},{
"addr_info":[{"family":"inet","local":"10.244.0.0","prefixlen":32}],
"address":"0e:7f:9a:08:ec:eb","ifname":"flannel.1","link_type":"ether","linkinfo":{
"info_data":{"id":1,"link":"eth0","local":"10.0.0.31","port":8472},"info_kind":"vxlan"},
"mtu":1450},{"addr_info":[{"family":"inet","local":"10.244.0.1","prefixlen":24}],
"address":"0e:fb:90:90:ff:61","ifname":"cni0","link_type":"ether","linkinfo":{
"info_kind":"bridge"},"mtu":1450},{"address":"52:d6:64:1b:b7:c2","ifname":"veth85dffee6",
"link_type":"ether","linkinfo":{"info_kind":"veth"},"master":"cni0","mtu":1450},{
"address":"7e:9a:9f:12:89:9e","ifname":"vethc1d02a88","link_type":"ether","linkinfo":{
"info_kind":"veth"},"master":"cni0","mtu":1450},{"address":"66:fc:87:bf:41:a2",
"ifname":"veth390f690f","link_type":"ether","linkinfo":{"info_kind":"veth"},"master":"cni0",
"mtu":1450}],"node1":[{"addr_info":[{"family":"inet","local":"10.0.0.32","prefixlen":24}],
"address":"0e:42:47:bc:16:71","ifname":"eth0","link_type":"ether","linkinfo":{
"info_kind":"veth"},"mtu":1500},{"addr_info":[{"family":"inet","local":"10.244.1.0",
"prefixlen":32}],"address":"0e:c2:39:5c:ad:5e","ifname":"flannel.1","link_type":"ether",
"linkinfo":{"info_data":{"id":1,"link":"eth0","local":"10.0.0.32","port":8472},
"info_kind":"vxlan"},"mtu":1450},{"addr_info":[{"family":"inet","local":"10.244.1.1",
"prefixlen":24}],"address":"0e:50:05:bc:5a:21","ifname":"cni0","link_type":"ether",
"linkinfo":{"info_kind":"bridge"},"mtu":1450},{"address":"96:4d:db:9a:c4:1f",
"ifname":"veth8d8d04a1","link_type":"ether","linkinfo":{"info_kind":"veth"},"master":"cni0",
"mtu":1450},{"address":"e2:b7:a8:5b:c2:9e","ifname":"vethf3e88224","link_type":"ether",
"linkinfo":{"info_kind":"veth"},"master":"cni0","mtu":1450},{"address":"8a:db:4d:06:3c:70",
"ifname":"vetha389c016","link_type":"ether","linkinfo":{"info_kind":"veth"},"master":"cni0",
"mtu":1450}],"node2":[{"addr_info":[{"family":"inet","local":"10.0.0.33","prefixlen":24}],
"address":"0e:f5:72:a7:43:c9","ifname":"eth0","link_type":"ether","linkinfo":{
"info_kind":"veth"},"mtu":1500},{"addr_info":[{"family":"inet","local":"10.244.2.0",
"prefixlen":32}],"address":"0e:07:c2:80:9a:74","ifname":"flannel.1","link_type":"ether",
"linkinfo":{"info_data":{"id":1,"link":"eth0","local":"10.0.0.33","port":8472},
"info_kind":"vxlan"},"mtu":1450},{"addr_info":[{"family":"inet","local":"10.244.2.1",
"prefixlen":24}],"address":"0e:af:ed:77:92:8b","ifname":"cni0","link_type":"ether",
"linkinfo":{"info_kind":"bridge"},"mtu":1450},{"address":"3a:5c:8e:4f:4e:cc",
"ifname":"vetha11124ff","link_type":"ether","linkinfo":{"info_kind":"veth"},"master":"cni0",
"mtu":1450},{"address":"1e:62:68:cd:45:32","ifname":"veth8e7d3f13","link_type":"ether",
"linkinfo":{"info_kind":"veth"},"master":"cni0","mtu":1450}],"r1":[{"addr_info":[{
"family":"inet","local":"10.0.0.1","prefixlen":24}],"address":"0e:11:b7:62:12:c6",
"ifname":"eth0","link_type":"ether","linkinfo":{"info_kind":"veth"},"mtu":1500},{
"addr_info":[{"family":"inet","local":"192.168.100.1","prefixlen":24}],
"address":"0e:e2:20:79:c0:9c","ifname":"eth1","link_type":"ether","linkinfo":{
"info_kind":"veth"},"mtu":1500}]},"neighbours":{"default/web-1":[{"dev":"eth0",
"dst":"10.244.0.1","lladdr":"0e:fb:90:90:ff:61","state":["REACHABLE"]}],"default/web-3":[{
"dev":"eth0","dst":"10.244.2.1","lladdr":"0e:af:ed:77:92:8b","state":["REACHABLE"]}],
"master":[{"dev":"flannel.1","dst":"10.244.1.0","lladdr":"0e:c2:39:5c:ad:5e","state":[
"PERMANENT"]},{"dev":"flannel.1","dst":"10.244.2.0","lladdr":"0e:07:c2:80:9a:74","state":[
"PERMANENT"]},{"dev":"eth0","dst":"10.0.0.1","lladdr":"0e:11:b7:62:12:c6","state":[
"REACHABLE"]},{"dev":"cni0","dst":"10.244.0.2","lladdr":"0e:9e:fa:ef:58:ff","state":[
"REACHABLE"]}],"node1":[{"dev":"cni0","dst":"10.244.1.4","lladdr":"0e:1b:52:81:a5:b4",
"state":["REACHABLE"]},{"dev":"eth0","dst":"10.0.0.33","lladdr":"0e:f5:72:a7:43:c9",
"state":["REACHABLE"]},{"dev":"flannel.1","dst":"10.244.0.0","lladdr":"0e:7f:9a:08:ec:eb",
"state":["PERMANENT"]},{"dev":"flannel.1","dst":"10.244.2.0","lladdr":"0e:07:c2:80:9a:74",
"state":["PERMANENT"]}],"node2":[{"dev":"eth0","dst":"10.0.0.32",
"lladdr":"0e:42:47:bc:16:71","state":["REACHABLE"]},{"dev":"flannel.1","dst":"10.244.0.0",
"lladdr":"0e:7f:9a:08:ec:eb","state":["PERMANENT"]},{"dev":"cni0","dst":"10.244.2.2",
"lladdr":"0e:a7:94:4f:05:3b","state":["REACHABLE"]},{"dev":"flannel.1","dst":"10.244.1.0",
"lladdr":"0e:c2:39:5c:ad:5e","state":["PERMANENT"]}],"r1":[{"dev":"eth0","dst":"10.0.0.31",
"lladdr":"0e:61:46:48:aa:1b","state":["REACHABLE"]},{"dev":"eth1","dst":"192.168.100.10",
"lladdr":"0e:7f:86:8a:1c:2b","state":["REACHABLE"]}]},"nft":{"master calico":null,
"master kube-proxy":[],"node1 calico":null,"node1 kube-proxy":[],"node2 calico":null,
"node2 kube-proxy":[{"map":{"elem":[[{"concat":["10.96.0.2","tcp",80]},{"goto":{
"target":"service-JOKA5FQZ-default/myservice/tcp/"}}],[{"concat":["203.0.113.10","tcp",80]},
{"goto":{"target":"external-JOKA5FQZ-default/myservice/tcp/"}}]],"name":"service-ips"}},{
"rule":{"chain":"service-JOKA5FQZ-default/myservice/tcp/","expr":[{"match":{"left":{
"payload":{"field":"daddr","protocol":"ip"}},"op":"==","right":"10.96.0.2"}},{"match":{
"left":{"payload":{"field":"saddr","protocol":"ip"}},"op":"!=","right":{"prefix":{
"addr":"10.244.0.0","len":16}}}},{"jump":{"target":"mark-for-masquerade"}}]}},{"rule":{
"chain":"service-JOKA5FQZ-default/myservice/tcp/","expr":[{"vmap":{"data":{"set":[[0,{
"goto":{"target":"endpoint-KIZUWAMJ-default/myservice/tcp/__10.244.0.4/80"}}],[1,{"goto":{
"target":"endpoint-FN46ZWYQ-default/myservice/tcp/__10.244.1.4/80"}}]]},"key":{"numgen":{
"mod":2,"mode":"random","offset":0}}}}]}},{"rule":{
"chain":"external-JOKA5FQZ-default/myservice/tcp/","expr":[{"jump":{
"target":"mark-for-masquerade"}}]}},{"rule":{
"chain":"external-JOKA5FQZ-default/myservice/tcp/","expr":[{"goto":{
"target":"service-JOKA5FQZ-default/myservice/tcp/"}}]}},{"rule":{
"chain":"endpoint-KIZUWAMJ-default/myservice/tcp/__10.244.0.4/80","expr":[{"match":{"left":{
"payload":{"field":"saddr","protocol":"ip"}},"op":"==","right":"10.244.0.4"}},{"jump":{
"target":"mark-for-masquerade"}}]}},{"rule":{
"chain":"endpoint-KIZUWAMJ-default/myservice/tcp/__10.244.0.4/80","expr":[{"match":{"left":{
"meta":{"key":"l4proto"}},"op":"==","right":"tcp"}},{"dnat":{"addr":"10.244.0.4",
"port":80}}]}},{"rule":{"chain":"endpoint-FN46ZWYQ-default/myservice/tcp/__10.244.1.4/80",
"expr":[{"match":{"left":{"payload":{"field":"saddr","protocol":"ip"}},"op":"==",
"right":"10.244.1.4"}},{"jump":{"target":"mark-for-masquerade"}}]}},{"rule":{
"chain":"endpoint-FN46ZWYQ-default/myservice/tcp/__10.244.1.4/80","expr":[{"match":{"left":{
"meta":{"key":"l4proto"}},"op":"==","right":"tcp"}},{"dnat":{"addr":"10.244.1.4",
"port":80}}]}}]},"pods":{"default/demo2-6945dd9b8d-g72w6":{"iface":"vetha389c016",
"ip":"10.244.1.4","labels":{"app":"myapp","pod-template-hash":"6945dd9b8d"},
"name":"demo2-6945dd9b8d-g72w6","namespace":"default","node":"node1"},
"default/demo2-6945dd9b8d-wvz7x":{"iface":"veth390f690f","ip":"10.244.0.4","labels":{
"app":"myapp","pod-template-hash":"6945dd9b8d"},"name":"demo2-6945dd9b8d-wvz7x",
"namespace":"default","node":"master"}},"route_get":{
"default/demo2-6945dd9b8d-g72w6 10.244.1.4 10.244.2.2 eth0":{"dev":"eth0",
"dst":"10.244.1.4","prefsrc":"10.244.1.4","protocol":"kernel","type":"local"},
"default/demo2-6945dd9b8d-wvz7x 10.244.0.4 10.244.2.2 eth0":{"dev":"eth0",
"dst":"10.244.0.4","prefsrc":"10.244.0.4","protocol":"kernel","type":"local"},
"default/web-1 192.168.100.10 10.244.0.2 None":{"dev":"eth0","dst":"default",
"gateway":"10.244.0.1","prefsrc":"10.244.0.2","protocol":"boot","type":"unicast"},
"default/web-3 10.96.0.2 10.244.2.2 None":{"dev":"eth0","dst":"default",
"gateway":"10.244.2.1","prefsrc":"10.244.2.2","protocol":"boot","type":"unicast"},
"internet 192.168.100.10 10.0.0.31 eth0":{"dev":"eth0","dst":"192.168.100.10",
"prefsrc":"192.168.100.10","protocol":"kernel","type":"local"},
"master 10.0.0.31 10.0.0.33 eth0":{"dev":"eth0","dst":"10.0.0.31","prefsrc":"10.0.0.31",
"protocol":"kernel","type":"local"},"master 10.244.0.4 10.244.2.2 flannel.1":{"dev":"cni0",
"dst":"10.244.0.0/24","prefsrc":"10.244.0.1","protocol":"kernel","type":"unicast"},
"master 192.168.100.10 10.244.0.2 cni0":{"dev":"eth0","dst":"default","gateway":"10.0.0.1",
"protocol":"boot","type":"unicast"},"node1 10.0.0.32 10.0.0.33 eth0":{"dev":"eth0",
"dst":"10.0.0.32","prefsrc":"10.0.0.32","protocol":"kernel","type":"local"},
"node1 10.244.1.4 10.244.2.2 flannel.1":{"dev":"cni0","dst":"10.244.1.0/24",
"prefsrc":"10.244.1.1","protocol":"kernel","type":"unicast"},
"node2 10.0.0.31 10.0.0.33 None":{"dev":"eth0","dst":"10.0.0.0/24","prefsrc":"10.0.0.33",
"protocol":"kernel","type":"unicast"},"node2 10.0.0.32 10.0.0.33 None":{"dev":"eth0",
"dst":"10.0.0.0/24","prefsrc":"10.0.0.33","protocol":"kernel","type":"unicast"},
"node2 10.244.0.4 10.244.2.2 cni0":{"dev":"flannel.1","dst":"10.244.0.0/24","flags":[
"onlink"],"gateway":"10.244.0.0","protocol":"boot","type":"unicast"},
"node2 10.244.1.4 10.244.2.2 cni0":{"dev":"flannel.1","dst":"10.244.1.0/24","flags":[
"onlink"],"gateway":"10.244.1.0","protocol":"boot","type":"unicast"},
"r1 192.168.100.10 10.0.0.31 eth0":{"dev":"eth1","dst":"192.168.100.0/24",
"prefsrc":"192.168.100.1","protocol":"kernel","type":"unicast"}}}
"""

# `nft -j list table ip kube-proxy` of a node proxying default/web (port 80 -> http 8080,
# endpoints 10.244.1.2 and 10.244.2.2), trimmed to the service-ips map and service chains.
NFT_KUBE_PROXY = """
[{"map":{"name":"service-ips","elem":[[{"concat":["10.96.0.2","tcp",80]},{"goto":{
"target":"service-SUSTUHLJ-default/web/tcp/http"}}]]}},{"rule":{"chain":"services","expr":[{
"vmap":{"key":{"concat":[{"payload":{"protocol":"ip","field":"daddr"}},{"meta":{
"key":"l4proto"}},{"payload":{"protocol":"th","field":"dport"}}]},
"data":"@service-ips"}}]}},{"rule":{"chain":"services","expr":[{"match":{"op":"==","left":{
"payload":{"protocol":"ip","field":"daddr"}},"right":"@nodeport-ips"}},{"vmap":{"key":{
"concat":[{"meta":{"key":"l4proto"}},{"payload":{"protocol":"th","field":"dport"}}]},
"data":"@service-nodeports"}}]}},{"rule":{"chain":"service-endpoints-check","expr":[{
"vmap":{"key":{"concat":[{"payload":{"protocol":"ip","field":"daddr"}},{"meta":{
"key":"l4proto"}},{"payload":{"protocol":"th","field":"dport"}}]},
"data":"@no-endpoint-services"}}]}},{"rule":{
"chain":"service-SUSTUHLJ-default/web/tcp/http","expr":[{"match":{"op":"==","left":{
"payload":{"protocol":"ip","field":"daddr"}},"right":"10.96.0.2"}},{"match":{"op":"!=",
"left":{"payload":{"protocol":"ip","field":"saddr"}},"right":{"prefix":{"addr":"10.244.0.0",
"len":16}}}},{"jump":{"target":"mark-for-masquerade"}}]}},{"rule":{
"chain":"service-SUSTUHLJ-default/web/tcp/http","expr":[{"vmap":{"key":{"numgen":{
"mode":"random","mod":2,"offset":0}},"data":{"set":[[0,{"goto":{
"target":"endpoint-SVLGPL42-default/web/tcp/http__10.244.1.2/8080"}}],[1,{"goto":{
"target":"endpoint-AAOQDDFY-default/web/tcp/http__10.244.2.2/8080"}}]]}}}]}},{"rule":{
"chain":"endpoint-SVLGPL42-default/web/tcp/http__10.244.1.2/8080","expr":[{"match":{
"op":"==","left":{"payload":{"protocol":"ip","field":"saddr"}},"right":"10.244.1.2"}},{
"jump":{"target":"mark-for-masquerade"}}]}},{"rule":{
"chain":"endpoint-SVLGPL42-default/web/tcp/http__10.244.1.2/8080","expr":[{"match":{
"op":"==","left":{"meta":{"key":"l4proto"}},"right":"tcp"}},{"dnat":{"addr":"10.244.1.2",
"port":8080}}]}},{"rule":{"chain":"endpoint-AAOQDDFY-default/web/tcp/http__10.244.2.2/8080",
"expr":[{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"saddr"}},
"right":"10.244.2.2"}},{"jump":{"target":"mark-for-masquerade"}}]}},{"rule":{
"chain":"endpoint-AAOQDDFY-default/web/tcp/http__10.244.2.2/8080","expr":[{"match":{
"op":"==","left":{"meta":{"key":"l4proto"}},"right":"tcp"}},{"dnat":{"addr":"10.244.2.2",
"port":8080}}]}}]
"""


class Replay:
    """A StateReader answering from a recording; a question it was not asked fails."""

    def __init__(self, recorded: str) -> None:
        self.data: Json = json.loads(recorded)

    def links(self, ns: str) -> list[Json]:
        return list(self.data["links"][ns])

    def neighbours(self, ns: str) -> list[Json]:
        return list(self.data["neighbours"][ns])

    def fdb(self, ns: str) -> list[Json]:
        return list(self.data["fdb"][ns])

    def routes(self, ns: str) -> list[Json]:
        return list(self.data["routes"][ns])

    def route_get(self, ns: str, dst: str, src: str | None, iif: str | None) -> Json:
        got: Json = self.data["route_get"][f"{ns} {dst} {src} {iif}"]
        if "error" in got:
            raise NoRoute(got["error"])
        return dict(got)

    def nft_table(self, ns: str, table: str) -> list[Json] | None:
        found: list[Json] | None = self.data["nft"][f"{ns} {table}"]
        return found

    def sysctl(self, ns: str, key: str) -> str | None:
        found: str | None = self.data["sysctl"][f"{ns} {key}"]
        return found

    def iptables_nat(self, ns: str) -> str:
        return "\n".join(
            " ".join(f'"{a}"' if " " in a else a for a in rule)
            for rule in self.data["iptables_nat"][ns]
        )


@cache
def lab(mode: str, topology: str) -> tuple[Plan, Store]:
    """The plan `up` records and the objects it seeds, built here without a kernel."""
    topo = load_topology(topology)
    m = get_mode(mode)
    return m.plan(topo, "kernel"), from_topology(topo, m.network)


def trace(
    recorded: str,
    mode: str,
    topology: str,
    src: str,
    dst: str,
    protocol: str = "tcp",
    port: int | None = 80,
    objects: Store | None = None,
) -> Walk:
    plan, seeded = lab(mode, topology)
    objects = objects or seeded
    return walk(
        plan,
        objects,
        Replay(recorded),
        resolve_endpoint(src, plan, objects, dst=False),
        resolve_endpoint(dst, plan, objects, dst=True),
        protocol,
        port,
    )


def steps(w: Walk) -> list[tuple[str, str | None, str | None, str]]:
    return [(h.ns, h.in_dev, h.out_dev, h.action) for h in w.hops]


def without(recorded: str, kind: str, ns: str, **match: Any) -> str:
    """The recording with the `kind` entries of `ns` that match `match` removed."""
    data = json.loads(recorded)
    before = data[kind][ns]
    data[kind][ns] = [e for e in before if any(e.get(k) != v for k, v in match.items())]
    assert len(data[kind][ns]) < len(before), "nothing matched"
    return json.dumps(data)


# ---- flannel-vxlan ----

VTEP_NODE2 = "0e:07:c2:80:9a:74"


def test_flannel_vxlan_walk_names_every_hop() -> None:
    w = trace(FLANNEL_VXLAN, "flannel-vxlan", "default", "default/web-1", "default/web-3")
    assert w.reached and w.reason == "delivered to default/web-3 (10.244.2.2)"
    assert steps(w) == [
        ("default/web-1", None, "eth0", "route"),
        ("master", "cni0", "flannel.1", "encapsulate"),
        ("master", None, "eth0", "route"),
        ("node2", "eth0", "flannel.1", "decapsulate"),
        ("node2", "flannel.1", "cni0", "route"),
        ("default/web-3", "eth0", None, "deliver"),
    ]
    first, encap, underlay, decap, bridge, _ = w.hops
    assert "veth eth0 -> master:veth85dffee6, a port of bridge cni0" in first.detail
    assert "10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink proto boot" in encap.detail
    assert f"neighbour 10.244.2.0 -> {VTEP_NODE2} (VTEP MAC)" in encap.detail
    assert f"FDB {VTEP_NODE2} -> 10.0.0.33 (node2)" in encap.detail
    assert "VXLAN VNI 1 on UDP 8472, outer 10.0.0.31 -> 10.0.0.33; +50 bytes" in encap.detail
    assert "flannel.1 MTU 1450 = eth0 MTU 1500 - 50" in encap.detail
    assert encap.predicted == {
        "iface": "master:flannel.1",
        "src": "10.244.0.2",
        "dst": "10.244.2.2",
        "encap": "bare",
        "eth_dst": VTEP_NODE2,
    }
    assert underlay.predicted == {
        "iface": "master:eth0",
        "src": "10.244.0.2",
        "dst": "10.244.2.2",
        "encap": "vxlan",
        "outer_src": "10.0.0.31",
        "outer_dst": "10.0.0.33",
        "port": 8472,
        "vni": 1,
        "eth_dst": underlay_mac("node2", "eth0"),
    }
    assert "where 10.0.0.33 is node2's eth0" in underlay.detail
    assert decap.capture == "eth0" and "goes to flannel.1, which decapsulates" in decap.detail
    assert "port vetha11124ff; veth vetha11124ff leads to default/web-3" in bridge.detail
    assert bridge.capture == "vetha11124ff"  # the port, never the bridge (see walk._At)


def test_flannel_vxlan_same_node_pods_are_switched_by_cni0() -> None:
    w = trace(FLANNEL_VXLAN, "flannel-vxlan", "default", "default/web-1", "test/db-1")
    assert steps(w) == [
        ("default/web-1", None, "eth0", "route"),
        ("master", "veth85dffee6", "vethc1d02a88", "switch"),
        ("test/db-1", "eth0", None, "deliver"),
    ]
    assert "switched at L2, not routed" in w.hops[1].detail
    assert w.hops[1].capture == "vethc1d02a88"


def test_flannel_vxlan_from_a_node_takes_its_vtep_address_as_source() -> None:
    w = trace(FLANNEL_VXLAN, "flannel-vxlan", "default", "node1", "default/web-1", "icmp", None)
    assert w.reached
    assert [h.ns for h in w.hops] == ["node1", "node1", "master", "master", "default/web-1"]
    assert w.hops[0].predicted["src"] == "10.244.1.0"  # flannel.1's /32, the route's source
    assert "the kernel answers the echo request" in w.hops[-1].detail


def test_missing_fdb_entry_stops_the_walk_at_the_vtep() -> None:
    recorded = without(FLANNEL_VXLAN, "fdb", "master", mac=VTEP_NODE2)
    w = trace(recorded, "flannel-vxlan", "default", "default/web-1", "default/web-3")
    assert not w.reached
    assert steps(w) == [
        ("default/web-1", None, "eth0", "route"),
        ("master", "cni0", None, "drop"),
    ]
    assert w.reason.startswith(f"master: flannel.1 has no FDB entry for {VTEP_NODE2}")
    assert "which node owns that VTEP" in w.reason
    # Still proven where it arrived: on web-1's port of cni0, to the bridge's MAC.
    assert w.hops[1].capture == "veth85dffee6"
    assert w.hops[1].predicted["eth_dst"] == underlay_mac("master", "cni0")


def test_missing_vtep_neighbour_stops_the_walk() -> None:
    recorded = without(FLANNEL_VXLAN, "neighbours", "master", dst="10.244.2.0")
    w = trace(recorded, "flannel-vxlan", "default", "default/web-1", "default/web-3")
    assert not w.reached and w.hops[-1].action == "drop"
    assert "flannel.1 has no neighbour entry for 10.244.2.0" in w.reason


# ---- calico-bgp ----

CALI_WEB1 = "cali0761ccbeace"
CALI_WEB3 = "cali4448cbddedf"


def test_calico_bgp_walk_follows_bgp_routes_and_names_policy_chains() -> None:
    w = trace(CALICO_BGP, "calico-bgp", "default", "default/web-1", "default/web-3")
    assert w.reached
    assert steps(w) == [
        ("default/web-1", None, "eth0", "route"),
        ("master", CALI_WEB1, "eth0", "route"),
        ("node2", "eth0", CALI_WEB3, "route"),
        ("default/web-3", "eth0", None, "deliver"),
    ]
    pod, master, node2, _ = w.hops
    assert "default via 169.254.1.1 dev eth0" in pod.detail
    assert f"169.254.1.1 -> ee:ee:ee:ee:ee:ee (proxy ARP by master's {CALI_WEB1})" in pod.detail
    assert "10.244.2.0/26 via 10.0.0.33 dev eth0 proto bgp (learned by BGP)" in master.detail
    assert f"policy chains on {CALI_WEB1}: filter-cali-fw-{CALI_WEB1}" in master.detail
    assert "the truth table allows default/web-1 -> default/web-3 tcp/80" in master.detail
    assert f"filter-cali-tw-{CALI_WEB3} (ingress of default/web-3)" in node2.detail
    assert "(permanent)" in node2.detail  # Felix's static ARP entry
    assert master.predicted["encap"] == "bare"
    assert master.predicted["eth_dst"] == underlay_mac("node2", "eth0")


def test_calico_same_node_pods_are_routed_by_the_node() -> None:
    w = trace(CALICO_BGP, "calico-bgp", "default", "default/web-1", "test/db-1", "udp", 80)
    assert steps(w) == [
        ("default/web-1", None, "eth0", "route"),
        ("master", CALI_WEB1, "cali44b4014db40", "route"),
        ("test/db-1", "eth0", None, "deliver"),
    ]
    assert "answers an echo on udp/80" in w.hops[-1].detail


def test_calico_ingress_policy_drops_where_the_truth_table_says() -> None:
    _, seeded = lab("calico-bgp", "default")
    objects = seeded.model_copy(deep=True)
    deny = NetworkPolicy.model_validate(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "deny-web-3", "namespace": "default"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]},
        }
    )
    objects.networkpolicies["default/deny-web-3"] = deny
    w = trace(
        CALICO_BGP, "calico-bgp", "default", "default/web-1", "default/web-3", objects=objects
    )
    assert not w.reached
    assert steps(w)[-1] == ("node2", "eth0", None, "drop")
    assert "the truth table denies default/web-1 -> default/web-3 tcp/80" in w.hops[-1].detail
    assert w.reason == (
        f"node2: dropped by ingress NetworkPolicy of default/web-3 in filter-cali-tw-{CALI_WEB3}"
    )


# ---- flannel-host-gw across a router ----


def test_host_gw_across_a_router_stops_with_the_reason() -> None:
    w = trace(HOST_GW, "flannel-host-gw", "cross-subnet", "default/web-1", "default/web-3")
    assert not w.reached
    assert steps(w) == [
        ("default/web-1", None, "eth0", "route"),
        ("node1", "cni0", "eth0", "route"),
        ("r1", "eth0", None, "drop"),
    ]
    missing = (
        "node1: no route to 10.244.2.0/24 (planned: 10.244.2.0/24 via 10.0.1.33 dev eth0): "
        "host-gw needs peer node3 (10.0.1.33) on the same L2 segment"
    )
    assert missing in w.hops[1].detail
    assert "default via 10.0.0.1 dev eth0" in w.hops[1].detail
    assert w.reason == f"r1: no route to 10.244.2.2 (Network is unreachable); {missing}"


def test_host_gw_on_one_segment_sends_bare_packets_to_the_peer_node() -> None:
    w = trace(HOST_GW, "flannel-host-gw", "cross-subnet", "default/web-1", "default/web-2")
    assert w.reached
    assert [h.ns for h in w.hops] == ["default/web-1", "node1", "node2", "default/web-2"]
    node1 = w.hops[1]
    assert "10.244.1.0/24 via 10.0.0.32 dev eth0" in node1.detail
    assert node1.predicted == {
        "iface": "node1:eth0",
        "src": "10.244.0.2",
        "dst": "10.244.1.2",
        "encap": "bare",
        "eth_dst": underlay_mac("node2", "eth0"),
    }


# ---- a Service, masquerading ----


def services_store() -> Store:
    _, seeded = lab("flannel-vxlan", "services")
    objects = seeded.model_copy(deep=True)
    for key, pod in json.loads(SERVICES)["pods"].items():
        objects.pods[key] = PodRecord.model_validate(pod)
    objects.services["default/myservice"] = Service.model_validate(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "myservice", "namespace": "default"},
            "spec": {
                "clusterIP": "10.96.0.2",
                "selector": {"app": "myapp"},
                "ports": [{"port": 80}],
            },
        }
    )
    return objects


def test_cluster_ip_forks_at_kube_proxy_one_branch_per_endpoint() -> None:
    w = trace(
        SERVICES,
        "flannel-vxlan",
        "services",
        "default/web-3",
        "svc/default/myservice",
        objects=services_store(),
    )
    assert [h.ns for h in w.hops] == ["default/web-3"]
    assert w.hops[0].predicted["dst"] == "10.96.0.2"  # before DNAT: the ClusterIP
    assert set(w.branches) == {"10.244.0.4:80", "10.244.1.4:80"}
    paths = dict(w.paths())
    to_node1 = paths["10.244.1.4:80"]
    assert to_node1.reached
    assert [h.ns for h in to_node1.hops] == [
        "default/web-3",
        "node2",
        "node2",
        "node1",
        "node1",
        "default/demo2-6945dd9b8d-g72w6",
    ]
    dnat = to_node1.hops[1]
    assert dnat.detail.startswith(
        "kube-proxy (nftables): 10.96.0.2 . tcp . 80 in map service-ips -> "
        "service-JOKA5FQZ-default/myservice/tcp/ (numgen random mod 2), "
        "endpoints {10.244.0.4:80, 10.244.1.4:80}; this branch: 10.244.1.4:80"
    )
    assert dnat.predicted["dst"] == "10.244.1.4"  # after DNAT: the endpoint
    assert paths["10.244.0.4:80"].hops[-1].ns == "default/demo2-6945dd9b8d-wvz7x"


def test_pod_to_the_outside_is_masqueraded_by_its_node() -> None:
    w = trace(SERVICES, "flannel-vxlan", "services", "default/web-1", "internet")
    assert w.reached
    assert [h.ns for h in w.hops] == ["default/web-1", "master", "r1", "internet"]
    master = w.hops[1]
    assert "MASQUERADE (-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4" in master.detail
    assert "source 10.244.0.2 -> 10.0.0.31" in master.detail
    assert [h.predicted["src"] for h in w.hops] == [
        "10.244.0.2",
        "10.0.0.31",
        "10.0.0.31",
        "10.0.0.31",
    ]


# ---- naming SRC and DST ----


def test_resolve_endpoint_takes_what_exec_takes() -> None:
    plan, objects = lab("flannel-vxlan", "default")
    assert resolve_endpoint("web-1", plan, objects, dst=False).name == "default/web-1"
    node = resolve_endpoint("node2", plan, objects, dst=True)
    assert (node.kind, node.ip, node.ns) == ("node", "10.0.0.33", "node2")
    assert resolve_endpoint("10.0.0.99", plan, objects, dst=True).kind == "ip"
    services_plan, _ = lab("flannel-vxlan", "services")
    svc = resolve_endpoint("svc/default/myservice", services_plan, services_store(), dst=True)
    assert (svc.kind, svc.ip, svc.port, svc.protocol) == ("service", "10.96.0.2", 80, "tcp")
    with pytest.raises(TraceInputError, match="not a pod"):
        resolve_endpoint("nosuch", plan, objects, dst=True)
    with pytest.raises(TraceInputError, match="no such Service"):
        resolve_endpoint("svc/default/nosuch", plan, objects, dst=True)
    with pytest.raises(TraceInputError, match="cannot send"):
        resolve_endpoint("svc/default/myservice", plan, objects, dst=False)
    with pytest.raises(TraceInputError, match="SRC"):
        resolve_endpoint("10.0.0.99", plan, objects, dst=False)


# ---- kube-proxy DNAT, masquerade ----

NFT = json.loads(NFT_KUBE_PROXY)


def test_nft_dnat_names_the_chain_and_the_endpoint_set() -> None:
    got = nft_dnat(NFT, "10.96.0.2", "tcp", 80, "10.244.0.9")
    assert got is not None
    text, endpoints = got
    # A pod client is not masqueraded.
    assert endpoints == [("10.244.1.2", 8080, ""), ("10.244.2.2", 8080, "")]
    assert "service-SUSTUHLJ-default/web/tcp/http (numgen random mod 2)" in text
    # Negatives: another port, another protocol, another address.
    assert nft_dnat(NFT, "10.96.0.2", "tcp", 81, "10.244.0.9") is None
    assert nft_dnat(NFT, "10.96.0.2", "udp", 80, "10.244.0.9") is None
    assert nft_dnat(NFT, "10.96.0.3", "tcp", 80, "10.244.0.9") is None


def test_nft_dnat_marks_hairpin_and_off_cluster_clients_for_masquerade() -> None:
    got = nft_dnat(NFT, "10.96.0.2", "tcp", 80, "10.244.1.2")
    assert got is not None
    (_, hairpin), (_, other) = [(ip, mark) for ip, _, mark in got[1]]
    assert hairpin == (
        "'ip saddr 10.244.1.2 jump mark-for-masquerade' in "
        "endpoint-SVLGPL42-default/web/tcp/http__10.244.1.2/8080"
    )
    assert other == ""
    # A node's own address (the kernel picks it later: None) is outside the cluster CIDR.
    node = nft_dnat(NFT, "10.96.0.2", "tcp", 80, None)
    assert node is not None
    assert {mark for _, _, mark in node[1]} == {
        "'ip daddr 10.96.0.2 ip saddr != 10.244.0.0/16 jump mark-for-masquerade' in "
        "service-SUSTUHLJ-default/web/tcp/http"
    }


def test_iptables_dnat_follows_kube_services_to_the_endpoints() -> None:
    web = allocate(
        Service.model_validate(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {
                    "selector": {"app": "web"},
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                },
            }
        ),
        {},
        IPv4Network("10.96.0.0/12"),
    )
    pods = [
        PodInfo("default", f"web-{i}", ip, node, {"app": "web"}, (NamedPort("http", 8080, "TCP"),))
        for i, (ip, node) in enumerate((("10.244.1.2", "n1"), ("10.244.2.2", "n2")), 1)
    ]
    slices = compute_slices([web], pods)
    saved = proxy_iptables.compile_node(
        "n1", "10.0.0.31", IPv4Network("10.244.0.0/16"), [web], slices
    )
    got = iptables_dnat(saved, "10.96.0.2", "tcp", 80, "10.244.2.2")
    assert got is not None
    text, endpoints = got
    assert [(ip, port) for ip, port, _ in endpoints] == [
        ("10.244.1.2", 8080),
        ("10.244.2.2", 8080),
    ]
    assert "KUBE-SERVICES 10.96.0.2:80/tcp -> KUBE-SVC-" in text
    # Hairpin: only the endpoint that is the client masquerades it.
    assert endpoints[0][2] == ""
    assert endpoints[1][2].startswith("-A KUBE-SEP-") and "-s 10.244.2.2/32" in endpoints[1][2]
    assert iptables_dnat(saved, "10.96.0.2", "udp", 80, "10.244.2.2") is None


FLANNEL_NAT = render(
    "flannel-iptables.j2",
    node="node1",
    network=IPv4Network("10.244.0.0/16"),
    lease=IPv4Network("10.244.1.0/24"),
)


@pytest.mark.parametrize(
    ("src", "dst", "masqueraded"),
    [
        ("10.244.1.2", "192.168.100.10", True),  # pod -> outside: ipMasq
        ("10.244.1.2", "10.0.0.33", True),  # pod -> another node's address
        ("10.244.1.2", "10.244.2.2", False),  # pod -> pod keeps its source
        ("10.0.0.32", "192.168.100.10", False),  # the node's own traffic
        ("10.244.1.2", "224.0.0.5", False),  # multicast is never masqueraded
    ],
)
def test_flannel_ipmasq(src: str, dst: str, masqueraded: bool) -> None:
    got = postrouting_nat(FLANNEL_NAT, src, dst, "eth0")
    assert (got is not None) is masqueraded
    if got is not None:
        assert got[0] == "MASQUERADE" and "FLANNEL-POSTRTG" in got[1]


def test_kube_proxy_masquerades_only_marked_packets() -> None:
    saved = "\n".join(
        [
            "-A POSTROUTING -j KUBE-POSTROUTING",
            "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
            "-A KUBE-POSTROUTING -j MASQUERADE --random-fully",
            "-A POSTROUTING -s 10.244.0.0/16 -o eth0 -j SNAT --to-source 10.0.0.9",
        ]
    )
    # Unmarked: kube-proxy's chain returns, the next POSTROUTING rule applies.
    assert postrouting_nat(saved, "10.244.1.2", "8.8.8.8", "eth0") == (
        "SNAT",
        "-A POSTROUTING -s 10.244.0.0/16 -o eth0 -j SNAT --to-source 10.0.0.9",
        "10.0.0.9",
    )
    assert postrouting_nat(saved, "10.244.1.2", "8.8.8.8", "eth1") is None


# ---- the capture comparison ----


def _vxlan_frame(vni: int) -> Ether:
    return (
        Ether(dst="0e:61:46:48:aa:1b")
        / IP(src="10.0.0.31", dst="10.0.0.33")
        / UDP(sport=40000, dport=8472)
        / VXLAN(flags=0x08, vni=vni)
        / Ether()
        / IP(src="10.244.0.2", dst="10.244.2.2")
        / TCP(dport=80, flags="S")
    )


def _underlay_hop() -> Hop:
    return Hop(
        "master",
        None,
        "eth0",
        "route",
        "10.0.0.0/24 dev eth0 proto kernel (connected)",
        "eth0",
        {
            "iface": "master:eth0",
            "src": "10.244.0.2",
            "dst": "10.244.2.2",
            "encap": "vxlan",
            "outer_src": "10.0.0.31",
            "outer_dst": "10.0.0.33",
            "port": 8472,
            "vni": 1,
            "eth_dst": "0e:61:46:48:aa:1b",
        },
    )


def test_capture_that_shows_the_predicted_vxlan_passes_the_hop() -> None:
    hop = _underlay_hop()
    compare(hop, index_packets([_vxlan_frame(1)]))
    assert hop.ok and hop.seen is not None
    assert hop.seen["vni"] == 1 and hop.seen["packets"] == 1


def test_capture_with_another_vni_fails_the_hop() -> None:
    hop = _underlay_hop()
    compare(hop, index_packets([_vxlan_frame(2)]))
    assert hop.ok is False and hop.seen is not None
    assert hop.seen["problem"] == "vni 2 (predicted 1)"


def test_hop_where_nothing_was_seen_fails() -> None:
    hop = _underlay_hop()
    compare(hop, index_packets([]))
    assert hop.ok is False and hop.seen == {"packets": 0, "problem": "nothing seen"}


def test_unpredicted_source_is_shown() -> None:
    hop = _underlay_hop()
    hop.predicted = {**hop.predicted, "encap": "bare", "src": "10.244.0.2", "dst": "8.8.8.8"}
    for key in ("outer_src", "outer_dst", "port", "vni", "eth_dst"):
        hop.predicted.pop(key)
    compare(hop, index_packets([Ether() / IP(src="10.0.0.31", dst="8.8.8.8") / TCP()]))
    assert hop.ok is False and hop.seen is not None
    assert hop.seen["src"] == "10.0.0.31" and hop.seen["problem"] == "a different address pair"
