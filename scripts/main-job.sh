#!/usr/bin/env bash
# scripts/main-job.sh — the README's main job on this machine: 2 ranks fine-tune the bundled real
# model (stories260K) on the bundled GLUE SST-2 with the default config (configs/main.ini), printing
# the loss per step and the dev accuracy. Extra arguments override the config (e.g. --method full).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
exec mpirun -np 2 --oversubscribe build/deltatune train --config configs/main.ini "$@"
