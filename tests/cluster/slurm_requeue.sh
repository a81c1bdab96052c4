#!/usr/bin/env bash
# tests/cluster/slurm_requeue.sh DELTATUNE — the cluster/ scripts on a real (local, one-node) Slurm.
#
# What it checks, in this order:
#   a) scripts/slurm-local.sh up brings Slurm up (else exit 77: ctest reports the test as skipped, with the reason);
#   b) cluster/slurm-multinode.sbatch, submitted twice with sbatch --wait and CPU overrides (1 node, 2 tasks x
#      1 cpu, no GPUs, DEVICE=cpu BACKEND=mpi), runs 2 ranks of configs/main.ini: once with LAUNCHER=srun
#      (srun --mpi=pmix), once with LAUNCHER=mpirun (Open MPI's mpirun inside the allocation);
#   c) each job gets `scancel --batch --signal=USR1` mid-run (the notice Slurm sends 120 s before the time limit):
#      the batch shell forwards it to its launcher, deltatune checkpoints and exits 75, the script runs scontrol
#      requeue, the job comes back (Restarts >= 1), resumes from that checkpoint (--resume auto) and completes;
#   d) both jobs' losses equal, bit for bit per step, those of an uninterrupted `mpirun -np 2` run of the same
#      options (same world size);
#   e) srun --mpi=none -n 2 (no PMIx) fails with a non-zero exit and a clear error: Open MPI 4.1 refuses it itself
#      in MPI_Init (it sees a Slurm job step but no PMI server); and where the MPI cannot see Slurm at all (here:
#      SLURM_NODELIST removed, as with an MPI built without Slurm support) the ranks start as singletons and
#      deltatune's own launcher check refuses them, naming both views (launch/session.cpp check_launcher_env);
#   f) on exit, whatever happened: our jobs are cancelled and, if this test started Slurm, it is stopped again.
# Env: SLURM_TEST_STEPS (default 80), KEEP=1 keeps the work directory.
set -uo pipefail

SKIP=77
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DT=$(realpath "${1:-$ROOT/build/deltatune}")
STEPS=${SLURM_TEST_STEPS:-80}
PREEMPT_AFTER=15  # steps done before the preemption notice (past the first checkpoint at 10)
SLURM_LOCAL=$ROOT/scripts/slurm-local.sh
export SLURM_CONF=${DELTATUNE_SLURM_DIR:-/var/tmp/deltatune-slurm}/slurm.conf
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
T0=$(date +%s)

say() { echo "slurm_requeue: $*"; }
skip() { echo "SKIP slurm_requeue: $*"; exit "$SKIP"; }
fail() {
  echo "FAIL slurm_requeue: $*" >&2
  for f in "$WORK"/*.out; do [ -e "$f" ] && { echo "---- $f (last 25 lines)" >&2; tail -n 25 "$f" >&2; }; done
  KEEP=1
  exit 1
}

[ -x "$DT" ] || { echo "FAIL slurm_requeue: no deltatune binary at $DT" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || skip "needs root to start a local Slurm (scripts/slurm-local.sh up runs munged, slurmctld, slurmd)"
cd "$ROOT" || exit 1  # configs/main.ini names data/ relative to the project root; sbatch runs jobs in the submit directory

# ---- f) teardown, armed before anything starts ----------------------------------------------------------------
WORK=$(mktemp -d /tmp/dt-slurm-requeue.XXXXXX)
STARTED=0
JOBS=()
BG=()
cleanup() {
  local rc=$?
  for j in "${JOBS[@]+"${JOBS[@]}"}"; do scancel "$j" 2>/dev/null; done
  for p in "${BG[@]+"${BG[@]}"}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  [ "$STARTED" -eq 1 ] && "$SLURM_LOCAL" down >/dev/null 2>&1
  if [ "${KEEP:-0}" = 1 ]; then echo "slurm_requeue: work directory kept: $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- a) Slurm up ----------------------------------------------------------------------------------------------
if "$SLURM_LOCAL" status >/dev/null 2>&1; then
  say "using the local Slurm that is already running (left running afterwards)"
else
  STARTED=1
  if ! "$SLURM_LOCAL" up >"$WORK/up.log" 2>&1; then
    cat "$WORK/up.log"
    skip "a local Slurm cannot start here (scripts/slurm-local.sh up failed, output above)"
  fi
fi
PARTITION=$(sinfo -h -o %R | head -1)
CPUS=$(sinfo -h -p "$PARTITION" -o %C | awk -F/ '{print $4}')
[ "${CPUS:-0}" -ge 2 ] || skip "the local Slurm has ${CPUS:-0} cpu(s); the test needs 2 (2 ranks x 1 core)"
say "Slurm up: partition $PARTITION, $CPUS cpus ($(($(date +%s) - T0)) s)"

# ---- b) submit the same sbatch script twice: LAUNCHER=srun and LAUNCHER=mpirun --------------------------------
# What a CPU box needs, on sbatch's command line (it overrides the script's #SBATCH lines). --time: a safety net
# for a hung run (the trap cancels our jobs anyway).
SB=(--partition="$PARTITION" --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --gpus-per-node=0 --time=15:00)
TRAIN=(--train.steps "$STEPS" --ckpt.every 10 --train.eval-max 64)
declare -A ID WAITER SIGNALLED
submit() {  # submit LAUNCHER: sbatch --wait in the background; run dir, output and job id named after LAUNCHER
  DEVICE=cpu BACKEND=mpi LAUNCHER=$1 DELTATUNE=$DT CONFIG=configs/main.ini OUT=$WORK/$1 \
    sbatch --wait --parsable "${SB[@]}" --job-name="dt-$1" --output="$WORK/$1.out" \
    cluster/slurm-multinode.sbatch "${TRAIN[@]}" >"$WORK/$1.id" 2>"$WORK/$1.sbatch.err" &
  WAITER[$1]=$!
  BG+=($!)
  for _ in $(seq 1 100); do [ -s "$WORK/$1.id" ] && break; sleep 0.1; done
  [ -s "$WORK/$1.id" ] || fail "sbatch printed no job id for LAUNCHER=$1: $(cat "$WORK/$1.sbatch.err")"
  ID[$1]=$(cut -d';' -f1 "$WORK/$1.id")
  JOBS+=("${ID[$1]}")
}
submit srun
submit mpirun
say "submitted job ${ID[srun]} (LAUNCHER=srun) and job ${ID[mpirun]} (LAUNCHER=mpirun); both will be preempted"

# The uninterrupted reference, same options and world size, plain mpirun outside Slurm; it runs beside the jobs
# (sharing the cores only slows it: the losses don't depend on timing).
mkdir -p "$WORK/reference"
OMP_NUM_THREADS=1 mpirun -np 2 --bind-to none "$DT" train --config configs/main.ini --device cpu --dist.backend mpi \
  --threads 1 --out "$WORK/reference" --metrics "$WORK/reference/metrics.jsonl" "${TRAIN[@]}" \
  >"$WORK/reference.out" 2>&1 &
REF=$!
BG+=("$REF")

job_field() { scontrol show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1; }
steps_done() { local n; n=$(grep -c '"loss"' "$1" 2>/dev/null); echo "${n:-0}"; }

# ---- c) preempt each job mid-run, once --------------------------------------------------------------------------
# Slurm runs one job at a time here (2 cores, CR_Core): the second starts while the first waits to be requeued.
deadline=$(($(date +%s) + 480))
signalled=0
while [ "$signalled" -lt 2 ]; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "the jobs were not both preempted within 480 s"
  for l in srun mpirun; do
    [ -n "${SIGNALLED[$l]:-}" ] && continue
    kill -0 "${WAITER[$l]}" 2>/dev/null || fail "job ${ID[$l]} (LAUNCHER=$l) ended before it was preempted"
    n=$(steps_done "$WORK/$l/metrics.jsonl")
    [ "$n" -ge "$PREEMPT_AFTER" ] || continue
    scancel --batch --signal=USR1 "${ID[$l]}" || fail "scancel --batch --signal=USR1 ${ID[$l]} failed"
    SIGNALLED[$l]=$n
    signalled=$((signalled + 1))
    say "USR1 to job ${ID[$l]}'s batch shell (LAUNCHER=$l) after $n steps ($(($(date +%s) - T0)) s)"
  done
  sleep 0.2
done

# sbatch --wait returns when a job is finished for good; a requeued job goes back to pending and runs again.
declare -A PRE RESTARTS
for l in srun mpirun; do
  j=${ID[$l]}
  wait "${WAITER[$l]}"
  rc=$?
  state=$(job_field "$j" JobState)
  RESTARTS[$l]=$(job_field "$j" Restarts)
  { [ "$rc" -eq 0 ] && [ "$state" = COMPLETED ]; } || fail "job $j (LAUNCHER=$l): sbatch --wait exit $rc, state $state"
  [ "${RESTARTS[$l]:-0}" -ge 1 ] || fail "job $j (LAUNCHER=$l) was not requeued (Restarts=${RESTARTS[$l]:-?})"
  grep -q "requeueing job $j" "$WORK/$l.out" || fail "job $j's script did not requeue it after exit 75"
  pre=$(grep -o 'preempted at step [0-9]*' "$WORK/$l.out" | head -1 | awk '{print $4}')
  res=$(grep -o 'resumed from .* (step [0-9]*)' "$WORK/$l.out" | head -1 | grep -o '[0-9]*)$' | tr -d ')')
  [ -n "$pre" ] || fail "job $j's output has no 'preempted at step' line"
  [ "$res" = "$pre" ] || fail "job $j was preempted at step $pre but resumed from step ${res:-none}"
  starts=$(grep -c "^deltatune: job $j " "$WORK/$l.out")
  [ "$starts" -ge 2 ] || fail "job $j's output shows $starts start(s) of the batch script, expected 2"
  PRE[$l]=$pre
  say "job $j (LAUNCHER=$l): checkpoint at step $pre, exit 75, requeued (Restarts=${RESTARTS[$l]}), resumed from" \
    "step $res, COMPLETED ($(($(date +%s) - T0)) s)"
done
wait "$REF" || fail "the reference mpirun -np 2 run failed (exit $?)"
BG=()

# ---- d) bitwise equal losses ------------------------------------------------------------------------------------
python3 - "$STEPS" "$WORK/reference/metrics.jsonl" "$WORK/srun/metrics.jsonl" "$WORK/mpirun/metrics.jsonl" <<'PY' ||
import json, sys
def losses(path):
    out = {}
    for line in open(path):
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]  # the last occurrence wins: a resumed run appends
    return out
steps, ref_path, runs = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
want = set(range(1, steps + 1))
ref = losses(ref_path)
for path in [ref_path] + runs:
    got = losses(path)
    if set(got) != want:
        sys.exit(f"{path}: steps {sorted(want ^ set(got))[:10]} missing or extra")
    bad = [s for s in sorted(want) if got[s].hex() != ref[s].hex()]
    if bad:
        s = bad[0]
        sys.exit(f"{path}: {len(bad)} of {steps} losses differ from the reference; first: step {s}: {got[s]!r} vs {ref[s]!r}")
print(f"slurm_requeue: {steps}/{steps} losses bitwise equal: preempted+resumed srun job, preempted+resumed mpirun job, "
      "uninterrupted mpirun -np 2")
PY
  fail "losses differ"

# ---- e) srun without PMIx -----------------------------------------------------------------------------------------
NOPMIX=(--device cpu --dist.backend mpi --threads 1 --train.steps 2)
timeout 120 srun --mpi=none -p "$PARTITION" -n 2 "$DT" train --config configs/main.ini "${NOPMIX[@]}" \
  >"$WORK/nopmix.log" 2>&1
rc=$?
{ [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ]; } || fail "srun --mpi=none -n 2: exit $rc, expected a refusal"
if grep -q 'srun without --mpi=pmix' "$WORK/nopmix.log"; then
  who="deltatune"
elif grep -q 'direct launched using "srun"' "$WORK/nopmix.log"; then
  who="Open MPI (MPI_Init: a Slurm job step without PMI)"
else
  cat "$WORK/nopmix.log"; fail "srun --mpi=none -n 2 failed (exit $rc) without a clear message"
fi
say "srun --mpi=none -n 2: exit $rc, refused by $who"
timeout 120 srun --mpi=none -p "$PARTITION" -n 2 env -u SLURM_NODELIST "$DT" train --config configs/main.ini \
  "${NOPMIX[@]}" >"$WORK/nopmix-singletons.log" 2>&1
rc=$?
msg='the launcher and MPI disagree: Slurm (SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID) say rank 1 of 2'
{ [ "$rc" -eq 2 ] && grep -qF "$msg" "$WORK/nopmix-singletons.log" &&
  grep -qF 'srun without --mpi=pmix' "$WORK/nopmix-singletons.log"; } ||
  { cat "$WORK/nopmix-singletons.log"; fail "singletons under srun --mpi=none: exit $rc, no launcher-check error"; }
say "srun --mpi=none -n 2, MPI blind to Slurm (2 singletons): exit 2, deltatune: \"$msg ... MPI says rank 0 of 1\""

echo "slurm_requeue: PASS in $(($(date +%s) - T0)) s: local Slurm ($CPUS cpus); cluster/slurm-multinode.sbatch, 2 ranks" \
  "x $STEPS steps, LAUNCHER=srun (--mpi=pmix) and LAUNCHER=mpirun each preempted (checkpoint at steps ${PRE[srun]}," \
  "${PRE[mpirun]}), requeued (Restarts ${RESTARTS[srun]}, ${RESTARTS[mpirun]}) and resumed; all $STEPS losses" \
  "bitwise equal to an uninterrupted run; srun --mpi=none refused"
