#!/usr/bin/env bash
# scripts/main-job.sh — the README's main job on this machine: 2 ranks on the bundled real data.
# Until training lands (issue 5) the main job is a 2-rank commbench of the all-reduce.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
exec mpirun -np 2 --oversubscribe build/deltatune commbench -b 8 -e 64M -f 4 "$@"
