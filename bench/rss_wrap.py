#!/usr/bin/env python3
"""bench/rss_wrap.py PREFIX CMD... — run CMD (one MPI rank) and write its peak RSS to PREFIX.<rank>.rss.

The peak is the child's ru_maxrss (Linux: its VmHWM, in KiB), so each rank is measured on its own,
not the launcher. The rank comes from Open MPI's environment (0 for a single process).
"""
import os
import resource
import subprocess
import sys

prefix, cmd = sys.argv[1], sys.argv[2:]
rc = subprocess.call(cmd)
kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
rank = os.environ.get("OMPI_COMM_WORLD_RANK", "0")
with open(f"{prefix}.{rank}.rss", "w") as f:
    f.write(f"{kib * 1024} bytes peak RSS (VmHWM of pid's child) rc {rc}\n")
sys.exit(rc)
