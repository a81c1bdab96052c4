#!/usr/bin/env bash
# cluster/mpirun-hostfile.sh — deltatune over a hostfile with Open MPI, without a scheduler.
#   HOSTFILE=cluster/hostfile.example NP=16 cluster/mpirun-hostfile.sh [extra deltatune train options]
# Every node needs the same build at the same path and a shared --out directory. On SIGUSR1 (sent
# to mpirun, which forwards it to every rank) deltatune checkpoints at the next step boundary and
# exits 75; run the script again to resume (--resume auto).
set -uo pipefail
cd "$(dirname "$0")/.."

HOSTFILE=${HOSTFILE:-cluster/hostfile.example}
NP=${NP:-16}
PER_NODE=${PER_NODE:-8}
THREADS=${THREADS:-8}
DELTATUNE=${DELTATUNE:-$PWD/build/deltatune}
CONFIG=${CONFIG:-configs/main.ini}
OUT=${OUT:-$PWD/runs/mpirun}
BACKEND=${BACKEND:-nccl}
DEVICE=${DEVICE:-cuda}  # cpu for CPU-only nodes (then BACKEND=mpi)
export HDF5_USE_FILE_LOCKING=FALSE OMP_NUM_THREADS=$THREADS
mkdir -p "$OUT"

mpirun --hostfile "$HOSTFILE" -np "$NP" --map-by "ppr:$PER_NODE:node:PE=$THREADS" --bind-to core \
  -x HDF5_USE_FILE_LOCKING -x OMP_NUM_THREADS -x PATH -x LD_LIBRARY_PATH \
  "$DELTATUNE" train --config "$CONFIG" --device "$DEVICE" --dist.backend "$BACKEND" --threads "$THREADS" \
  --out "$OUT" --resume auto --metrics "$OUT/metrics.jsonl" "$@"
rc=$?
[ "$rc" -eq 75 ] && echo "deltatune: preempted after a checkpoint; run again to resume from $OUT"
exit "$rc"
