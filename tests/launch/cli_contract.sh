#!/usr/bin/env bash
# The CLI contract of ../shared/CLI.md, end to end: every subcommand has --help, bad options and
# bad config files give one line on stderr and exit 2.
set -u
bin=$1
fail=0
check() {  # check <expected exit> <description> -- command...
  local want=$1 what=$2; shift 3
  local err rc
  err=$("$@" 2>&1 >/dev/null); rc=$?
  if [ "$rc" -ne "$want" ]; then echo "FAIL: $what: exit $rc, want $want: $err"; fail=1; return; fi
  echo "ok: $what"
  LAST_ERR=$err
}
check 0 "top-level --help" -- "$bin" --help
# The environment variables the code reads are listed where users look (README: the same names).
for var in DELTATUNE_CACHE DELTATUNE_CPU_BF16_LINEAR DELTATUNE_MPI_THREAD_SINGLE; do
  "$bin" --help | grep -q "$var" || { echo "FAIL: top-level --help lacks $var"; fail=1; }
  grep -q "$var" "$(dirname "$0")/../../README.md" || { echo "FAIL: README lacks $var"; fail=1; }
done
for sub in train eval generate plan mask inspect export commbench search; do
  check 0 "$sub --help" -- "$bin" "$sub" --help
  out=$("$bin" "$sub" --help)
  echo "$out" | grep -q -- "--config" || { echo "FAIL: $sub --help lacks --config"; fail=1; }
  check 2 "$sub with an unknown option" -- "$bin" "$sub" --no-such-option
  [ "$(echo "$LAST_ERR" | wc -l)" -eq 1 ] || { echo "FAIL: $sub: error is not one line: $LAST_ERR"; fail=1; }
  echo "$LAST_ERR" | grep -q "no-such-option" || { echo "FAIL: $sub: error does not name the option"; fail=1; }
  check 2 "$sub with an unreadable config" -- "$bin" "$sub" --config /nonexistent.ini
  echo "$LAST_ERR" | grep -q "/nonexistent.ini" || { echo "FAIL: $sub: error does not name the file"; fail=1; }
done
# --device cuda where torch sees no GPU: one line naming the cause, exit 2 (where a GPU is visible the
# GPU-labelled tests cover it). NCCL asked for CPU tensors and a bad --train.dtype: the same.
if ! nvidia-smi -L >/dev/null 2>&1; then
  check 2 "train --device cuda without a GPU" -- "$bin" train --device cuda --train.steps 1
  [ "$(echo "$LAST_ERR" | wc -l)" -eq 1 ] || { echo "FAIL: --device cuda: error is not one line: $LAST_ERR"; fail=1; }
  echo "$LAST_ERR" | grep -q -- "--device cuda: no GPU is visible" || { echo "FAIL: --device cuda: $LAST_ERR"; fail=1; }
  check 2 "generate --device cuda without a GPU" -- "$bin" generate --device cuda --steps 2
  check 2 "commbench --dist.backend nccl without a GPU" -- "$bin" commbench --dist.backend nccl -b 8 -e 8
fi
check 2 "--dist.backend nccl with --device cpu" -- "$bin" train --device cpu --dist.backend nccl --train.steps 1
echo "$LAST_ERR" | grep -q -- "needs --device cuda\|built without NCCL" || { echo "FAIL: nccl on cpu: $LAST_ERR"; fail=1; }
check 2 "a bad --train.dtype" -- "$bin" train --train.dtype fp8 --train.steps 1
echo "$LAST_ERR" | grep -q -- "--train.dtype must be fp32 or bf16" || { echo "FAIL: --train.dtype: $LAST_ERR"; fail=1; }
# Every shipped config parses (the README and cluster/ scripts point at them).
src=${DELTATUNE_SOURCE_DIR:-$(dirname "$0")/../..}
for ini in "$src"/configs/*.ini; do
  check 0 "config $(basename "$ini") parses" -- "$bin" train --config "$ini" --print-config
done
check 2 "a bad value in a config file" -- "$bin" train --config /dev/stdin --print-config <<<"[train]
lr = fast"
# A training run's config serves plan too (keys only train knows are skipped); unknown keys still fail.
# (configs name their data relative to the source tree)
check 0 "plan reads the main job's config" -- bash -c "cd '$src' && '$bin' plan --config configs/main.ini --json"
plan_json=$(cd "$src" && "$bin" plan --config configs/main.ini --json 2>/dev/null)
echo "$plan_json" | grep -q '"trainable_params":1428' || { echo "FAIL: plan --config main.ini: $plan_json"; fail=1; }
# Full fine-tuning trains everything, the classification head it adds included: exactly 100%, not 100.0492%.
full_line=$(cd "$src" && "$bin" plan --model data/stories260K/stories260K.bin --method full 2>/dev/null | grep 'trainable%')
echo "$full_line" | grep -q 'trainable%: 100.0000' || { echo "FAIL: plan --method full: $full_line"; fail=1; }
check 2 "an unknown key in a config file" -- "$bin" plan --config /dev/stdin <<<"[train]
no-such-key = 1"
echo "$LAST_ERR" | grep -q "no-such-key" || { echo "FAIL: the unknown config key is not named: $LAST_ERR"; fail=1; }
check 2 "an unknown key in a train config file" -- "$bin" train --config /dev/stdin --print-config <<<"[train]
no-such-key = 1"
# An option given twice keeps its last value (argparse, torchrun), over the config file's too.
twice=$("$bin" train --config "$src/configs/main.ini" --train.steps 5 --method lora --train.steps 7 --print-config 2>/dev/null)
echo "$twice" | grep -qx "steps = 7" || { echo "FAIL: --train.steps given twice: $(echo "$twice" | grep steps)"; fail=1; }
echo "$twice" | grep -qx "method = lora" || { echo "FAIL: --method over the config: $(echo "$twice" | grep method)"; fail=1; }
[ "$fail" -eq 0 ] && echo "ok: an option given twice: the last wins"
check 2 "unknown subcommand" -- "$bin" frobnicate
check 2 "no subcommand" -- "$bin"
exit $fail
