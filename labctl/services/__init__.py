"""Services and kube-proxy: the Service model and its IP/port allocation, EndpointSlices, the
two proxy compilers (iptables and nftables modes, in kube-proxy's own layout) and apply."""
