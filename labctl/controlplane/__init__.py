"""A live control plane for flannel modes: one etcd per lab (etcd.py), flannel's lease
records in it (lease.py), and one agent per node (agent.py) that holds its lease and programs
the peers it learns from the others' leases."""
