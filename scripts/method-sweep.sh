#!/usr/bin/env bash
# scripts/method-sweep.sh — every method's example config (configs/<method>.ini) trained on 2 ranks for its
# 300 steps on stories260K + SST-2: the loss falls? the bytes per step equal the trainable bytes? A markdown
# table on stdout (mean loss of the first and last 50 steps, dev accuracy at the end, bytes per step).
#   scripts/method-sweep.sh [method ...]      (default: every configs/<method>.ini but main and lora-qkvo)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${DELTATUNE:-build/deltatune}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
methods=("$@")
if [ ${#methods[@]} -eq 0 ]; then
  for f in configs/*.ini; do
    m=$(basename "$f" .ini)
    [ "$m" = main ] || [ "$m" = lora-qkvo ] || methods+=("$m")
  done
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "| method | trainable | loss, first 50 steps | loss, last 50 steps | dev accuracy | bytes/step (= 4 × trainable) | time |"
echo "|---|---|---|---|---|---|---|"
for m in "${methods[@]}"; do
  start=$(date +%s)
  mpirun -np 2 --oversubscribe "$bin" train --config "configs/$m.ini" --train.eval-every 0 \
    --metrics "$out/$m.jsonl" > "$out/$m.log" 2>&1 || { echo "| \`$m\` | failed: $(tail -1 "$out/$m.log") |"; continue; }
  trainable=$(grep -o 'trainable params: [0-9,]*' "$out/$m.log" | head -1 | grep -o '[0-9,]*$' | tr -d ,)
  /usr/bin/python3 - "$m" "$out/$m.jsonl" "$trainable" "$(( $(date +%s) - start ))" <<'PY'
import json, sys
m, path, trainable, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
rows = [json.loads(l) for l in open(path)]
steps = [r for r in rows if "loss" in r]
evals = [r for r in rows if "eval_accuracy" in r]
first = sum(r["loss"] for r in steps[:50]) / 50
last = sum(r["loss"] for r in steps[-50:]) / 50
b = {r["bytes_allreduced"] for r in steps}
ok = "yes" if b == {4 * trainable} else f"NO: {sorted(b)}"
print(f"| `{m}` | {trainable:,} | {first:.4f} | {last:.4f} | {evals[-1]['eval_accuracy']:.4f} | {ok} | {secs} s |")
PY
done
