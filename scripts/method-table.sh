#!/usr/bin/env bash
# scripts/method-table.sh — the README's method table: trainable parameters of every method on
# t5-base and stories260K, from `deltatune plan` (no model is allocated). Default options per method.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${DELTATUNE:-build/deltatune}
echo "| method | t5-base trainable | t5-base % | stories260K trainable | stories260K % | stories260K bytes/step/rank (n=2) |"
echo "|---|---|---|---|---|---|"
for m in full bitfit lora houlsby pfeiffer parallel_adapter prefix prompt ia3 compacter mam fish dsee lst; do
  # LST's default r = 8 does not divide stories260K's d_ff (172) or fit its heads: it uses r = 4 there.
  extra=(); [ "$m" = lst ] && extra=(--lst.r 4)
  t5=$("$bin" plan --model t5-base --method "$m" --json)
  st=$("$bin" plan --model data/stories260K/stories260K.bin --method "$m" "${extra[@]}" --json)
  python3 - "$m" "$t5" "$st" <<'PY'
import json, sys
m, a, b = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
pct = lambda j: 100.0 * j["trainable_params"] / j["total_params"]
print(f"| `{m}` | {a['trainable_params']:,} | {pct(a):.3f} | {b['trainable_params']:,} | {pct(b):.2f} | {b['bytes_per_step_per_rank']:,} |")
PY
done
