"""``python -m labctl.datapath.bpf --config FILE``: the per-node loader (see the package)."""

import sys

from labctl.datapath.bpf import main

sys.exit(main())
