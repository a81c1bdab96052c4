#!/usr/bin/env bash
# Two hosts made of network namespaces (scripts/netns-cluster.sh), one rank each, TCP between them over a
# link shaped to 1 Gbit/s, against the same job as 2 ranks on one host:
#   - the start-up line names 2 hosts with their own addresses (dt-h0 10.213.0.1, dt-h1 10.213.0.2);
#   - losses and the final evaluation equal the one-host run's, step for step;
#   - Open MPI's monitoring: the bytes each rank sent inside collectives per training step (a 20-step run
#     less a 10-step one, so the start-up and evaluation traffic cancels) equal the ring ideal of the
#     gradient payload, 2(p-1)/p x bytes_allreduced, plus the 16-byte loss all-reduce;
#   - up/down are idempotent, `down` leaves no namespace, and both refuse to run without root.
# usage: netns_cluster.sh DELTATUNE   (exit 77 = skipped: namespaces cannot be made here)
set -u
bin=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
cluster=$src/scripts/netns-cluster.sh
cd "$src"
tmp=$(mktemp -d)
trap '"$cluster" down >/dev/null 2>&1; rm -rf "$tmp"' EXIT
fail=0
check() { if eval "$2"; then echo "ok: $1"; else echo "FAIL: $1"; fail=1; fi; }

if [ "$(id -u)" -ne 0 ] || ! ip netns add dt-probe-$$ 2>/dev/null; then
  echo "SKIPPED: network namespaces cannot be made here (needs root with CAP_NET_ADMIN and iproute2)"
  exit 77
fi
ip netns del dt-probe-$$

"$cluster" up 2 --link 1gbit >"$tmp/up.log" 2>&1 || { cat "$tmp/up.log"; echo "FAIL: up 2"; exit 1; }
"$cluster" up 2 --link 1gbit >"$tmp/up2.log" 2>&1
check "up is idempotent (a second up 2 succeeds, still 2 hosts shaped to 1 Gbit/s)" \
  '[ "$(grep -c "dt-h[01] .*link 1Gbit" "$tmp/up2.log")" -eq 2 ]'

train=(train --config configs/main.ini --threads 1 --train.eval-max 256)
monitor() { echo --mca pml_monitoring_enable 2 --mca pml_monitoring_enable_output 3 --mca pml_monitoring_filename "$1"; }
for n in 10 20; do
  # shellcheck disable=SC2046
  "$cluster" mpirun -np 2 $(monitor "$tmp/mon$n") "$bin" "${train[@]}" --train.steps $n \
    --metrics "$tmp/hosts$n.jsonl" >"$tmp/hosts$n.log" 2>&1 || { tail -20 "$tmp/hosts$n.log"; echo "FAIL: $n steps on 2 hosts"; exit 1; }
done
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun -np 2 --oversubscribe --bind-to core \
  "$bin" "${train[@]}" --train.steps 20 --metrics "$tmp/local20.jsonl" >"$tmp/local20.log" 2>&1 ||
  { tail -20 "$tmp/local20.log"; echo "FAIL: 20 steps on one host"; exit 1; }

check "start-up line: 2 hosts with their own addresses" \
  'grep -q "placement: 2 hosts: dt-h0 (10.213.0.1) rank 0; dt-h1 (10.213.0.2) rank 1" "$tmp/hosts20.log"'
check "one host: 1 host, both ranks" 'grep -q "placement: 1 host: .* ranks 0,1" "$tmp/local20.log"'

python3 - "$tmp" <<'PY' || fail=1
import json, sys
tmp = sys.argv[1]
def rows(name):
    return [json.loads(l) for l in open(f"{tmp}/{name}.jsonl") if l.strip()]
def losses(name):
    return [(r["step"], r["loss"]) for r in rows(name) if "step_time_s" in r]
def final_eval(name):
    return [(r["step"], r["eval_accuracy"]) for r in rows(name) if "eval_accuracy" in r][-1]
ok = True
a, b = losses("hosts20"), losses("local20")
if len(a) != 20 or a != b:
    print(f"FAIL: losses on 2 hosts {a[:3]}... differ from one host's {b[:3]}...")
    ok = False
else:
    print(f"ok: 20 losses equal bit for bit (last {a[-1][1]!r}); final eval {final_eval('hosts20')}")
if final_eval("hosts20") != final_eval("local20"):
    print(f"FAIL: final eval {final_eval('hosts20')} vs one host {final_eval('local20')}")
    ok = False

def sent(prefix, rank):  # bytes sent inside collectives: the `I` lines of the monitoring output
    total = 0
    for line in open(f"{prefix}.{rank}.prof"):
        parts = line.split("\t")
        if parts[0] == "I":
            total += int(parts[3].split()[0])
    return total
payload = {r["bytes_allreduced"] for r in rows("hosts20") if "step_time_s" in r}
assert len(payload) == 1, payload
p = 2
ideal = 2 * (p - 1) / p * payload.pop() + 16  # gradients over a ring + the loss all-reduce (2 doubles)
for rank in range(p):
    per_step = (sent(f"{tmp}/mon20", rank) - sent(f"{tmp}/mon10", rank)) / 10
    if per_step != ideal:
        print(f"FAIL: rank {rank} sent {per_step} bytes per step in collectives, ring ideal {ideal}")
        ok = False
    else:
        print(f"ok: rank {rank} sent {per_step:.0f} bytes per step = ring ideal (Open MPI monitoring, over TCP)")
sys.exit(0 if ok else 1)
PY

out=$(setpriv --reuid=65534 --regid=65534 --clear-groups "$cluster" up 1 2>&1); rc=$?
check "up without root: exit 2 and says why" '[ $rc -eq 2 ] && echo "$out" | grep -q "needs root"'
out=$("$cluster" up 2 --link 1gbit:100us 2>&1); rc=$?
check "--link with a delay: applied, or refused with the reason (no netem)" \
  '[ $rc -eq 0 ] || echo "$out" | grep -q "no netem qdisc"'
"$cluster" down >/dev/null && "$cluster" down >/dev/null
check "down twice: no namespace left" '! ip netns list | grep -q "^dt-"'
exit $fail
