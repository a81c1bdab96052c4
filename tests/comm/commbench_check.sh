#!/usr/bin/env bash
# `deltatune commbench` end to end on NP ranks: each OP:DATATYPE given reports 0 wrong elements
# (exit 0), the table has one row per size and the JSON has the keys of ../shared/CLI.md with
# consistent values; bad flags exit 2.  usage: commbench_check.sh MPIEXEC DELTATUNE NP OP:DATATYPE...
set -u
mpiexec=$1 bin=$2 np=$3
shift 3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
run() { "$mpiexec" -np "$np" --oversubscribe --bind-to none "$bin" commbench "$@"; }

for pair in "$@"; do
  op=${pair%%:*} dt=${pair#*:}
  json="$tmp/$op-$dt.json"
  out=$(run -b 8 -e 64K -f 8 -n 3 -w 1 -d "$dt" --op "$op" --json "$json" 2>&1); rc=$?
  if [ $rc -ne 0 ]; then echo "FAIL: $op $dt: exit $rc"; echo "$out"; fail=1; continue; fi
  # 8, 64, 512, 4K, 32K bytes: five rows, then the footer.
  rows=$(echo "$out" | grep -c -E "^ +[0-9]+ +[0-9]+ +$dt ")
  [ "$rows" -eq 5 ] || { echo "FAIL: $op $dt: $rows table rows, want 5"; echo "$out"; fail=1; }
  echo "$out" | grep -q "^# Avg bus bandwidth" || { echo "FAIL: $op $dt: no footer"; fail=1; }
  payload=$(echo "$out" | sed -n 's/^# Payload on rank 0 *: \([0-9]*\) bytes in \([0-9]*\) collectives.*/\1 \2/p')
  python3 - "$json" "$op" "$dt" "$np" $payload <<'PY' || fail=1
import json, sys
path, op, dt, np = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
payload_bytes, payload_calls = int(sys.argv[5]), int(sys.argv[6])
rows = json.load(open(path))
keys = {"size_bytes", "count", "dtype", "redop", "op", "time_us", "algbw_gbps", "busbw_gbps", "wrong", "ranks", "backend"}
factor = {"allreduce": 2 * (np - 1) / np, "allgather": (np - 1) / np, "reducescatter": (np - 1) / np, "broadcast": 1.0}[op]
elem = {"float": 4, "double": 8, "bfloat16": 2, "half": 2, "int32": 4, "int64": 8}[dt]
ok = len(rows) == 5
for r in rows:
    ok &= keys <= set(r) and r["wrong"] == 0 and r["ranks"] == np and r["dtype"] == dt and r["op"] == op
    ok &= r["backend"] == "mpi" and r["count"] * elem == r["size_bytes"] and r["time_us"] > 0
    ok &= abs(r["busbw_gbps"] - factor * r["algbw_gbps"]) <= 1e-9 * max(1.0, r["algbw_gbps"])
    ok &= abs(r["algbw_gbps"] - r["size_bytes"] / 1e3 / r["time_us"]) <= 1e-6 * max(1e-9, r["algbw_gbps"])
# The communicator's counters: 4 calls (1 warm-up + 3 timed) per size, each handing over the input:
# the whole buffer, or one rank's block for all-gather.
per_call = sum(r["size_bytes"] // (np if op == "allgather" else 1) for r in rows)
if payload_calls != 4 * len(rows) or payload_bytes != 4 * per_call:
    print(f"FAIL: {op} {dt}: counters say {payload_bytes} bytes in {payload_calls} calls, want {4 * per_call} in {4 * len(rows)}")
    ok = False
if not ok:
    print(f"FAIL: {op} {dt}: bad JSON rows: {rows}")
    sys.exit(1)
PY
  echo "ok: $op $dt"
done

err=$(run -d complex 2>&1 >/dev/null); rc=$?
[ $rc -eq 2 ] || { echo "FAIL: --datatype complex: exit $rc, want 2"; fail=1; }
echo "$err" | grep -q "datatype" || { echo "FAIL: --datatype complex: error does not name the flag: $err"; fail=1; }
err=$(run -e 64Q 2>&1 >/dev/null); rc=$?
[ $rc -eq 2 ] || { echo "FAIL: -e 64Q: exit $rc, want 2"; fail=1; }
exit $fail
