"""Workloads: Pods and Deployments applied while a lab runs, their scheduling, IPAM, and the
CNI ADD/DEL plan of one pod (pure); the kubelet in the supervisor carries them out."""
