"""`labctl trace`: a packet walk that explains every hop from live kernel state (walk.py,
pure over a state reader; live.py reads the namespaces) and proves it with one real packet
captured on every interface the walk predicted (capture.py)."""
