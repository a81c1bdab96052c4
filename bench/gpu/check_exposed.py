#!/usr/bin/env python3
"""bench/gpu/check_exposed.py METRICS.jsonl — GPU check (scripts/gpu-check.sh): the steps of a `train --dist.backend
nccl` run report exposed_comm_s from the compute stream's timing events (comm/communicator.h StreamTimer), so it is
measured: > 0 on some step. Before, it was the host's wall time around NCCL's non-blocking wait(), ~0 whatever the
communication cost. Prints the median and the largest value; exits 1 when every step reports 0 (or none does)."""
import json
import sys


def main():
    with open(sys.argv[1]) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    exposed = sorted(r["exposed_comm_s"] for r in rows if "exposed_comm_s" in r)
    if not exposed:
        print("no step reported exposed_comm_s")
        return 1
    print(f"exposed_comm_s over {len(exposed)} steps: median {exposed[len(exposed) // 2] * 1e6:.1f} us, "
          f"max {exposed[-1] * 1e6:.1f} us")
    return 0 if exposed[-1] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
