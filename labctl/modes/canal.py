"""Canal: Calico's CNI plugin and policy with flannel's VXLAN between nodes, as the canal
manifest deploys them: pods get ``cali*`` veths (host-local IPAM from the node's flannel
lease), flanneld programs ``flannel.1``, Felix enforces NetworkPolicy. On the wire it is
flannel-vxlan; the difference is on the node (no ``cni0``) and in its netfilter."""

from __future__ import annotations

from labctl.modes import FELIX, Mode, register
from labctl.modes.flannel import BACKENDS, plan_flannel
from labctl.modes.podnet import CALI

register(
    Mode(
        name="canal",
        cni="canal",
        summary="cali* veths (Calico CNI, flannel lease IPAM); flannel.1 VXLAN VNI 1 port 8472; "
        "Felix enforces NetworkPolicy",
        wire="UDP 8472, VXLAN VNI 1, outer node IPs, inner pod IPs",
        network=CALI,
        backend=BACKENDS["flannel-vxlan"],
        planner=plan_flannel,
        policy=FELIX,
        cni_conf="10-canal.conflist",
    )
)
