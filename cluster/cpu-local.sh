#!/usr/bin/env bash
# cluster/cpu-local.sh — the main job (configs/main.ini) on this machine: 2 ranks on the CPU, each with
# cores / 2 torch threads, checkpoints in --out and --resume auto, so running it again after an
# interruption (Ctrl-C, kill -USR1 <mpirun pid>, a crash) continues where it stopped.
#   cluster/cpu-local.sh                      # out: runs/cpu-local
#   OUT=/tmp/run CKPT_EVERY=50 cluster/cpu-local.sh --train.steps 200
set -uo pipefail
cd "$(dirname "$0")/.."

NP=${NP:-2}
CORES=$(nproc)
THREADS=${THREADS:-$(( CORES / NP > 0 ? CORES / NP : 1 ))}
OUT=${OUT:-runs/cpu-local}
DELTATUNE=${DELTATUNE:-build/deltatune}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=$THREADS
mkdir -p "$OUT"

mpirun -np "$NP" --oversubscribe --bind-to none \
  "$DELTATUNE" train --config configs/main.ini --dist.backend mpi --threads "$THREADS" \
  --out "$OUT" --ckpt.every "${CKPT_EVERY:-100}" --resume auto --metrics "$OUT/metrics.jsonl" "$@"
rc=$?
[ "$rc" -eq 75 ] && echo "deltatune: interrupted after a checkpoint; run cluster/cpu-local.sh again to resume"
exit "$rc"
