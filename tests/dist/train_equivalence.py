#!/usr/bin/env python3
"""End-to-end data-parallel equivalence of `deltatune train` (issue 5, tests).

For each method, np=2 ranks with per-rank batch B must train exactly like np=1 with batch 2B: the same
examples per step (the sampler interleaves ranks over one global order), so the same loss trajectory
and the same final trainable values (compared through their L2 norm and sum), within fp tolerance.
Also checked per method, from the metrics file: bytes_allreduced per step == 4 x trainable params
(2 x with --dist.compress bf16), and collectives <= ceil(bytes / bucket cap) + 1.
With device cuda (the ctest entry train_equivalence_gpu, label gpu) every run trains on the GPU: the
ranks of one GPU all-reduce over MPI through host memory (NCCL refuses two ranks on one GPU); without a
GPU it exits 77, which ctest reports as skipped.
Usage: train_equivalence.py <deltatune binary> <source dir> [cpu|cuda]
"""
import json, math, os, re, shutil, subprocess, sys, tempfile

binary, source = sys.argv[1], sys.argv[2]
device = sys.argv[3] if len(sys.argv) > 3 else "cpu"
if device == "cuda" and (shutil.which("nvidia-smi") is None or
                         subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode != 0):
    print("SKIPPED: no GPU (nvidia-smi -L found none)")
    sys.exit(77)
env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
common = ["--device", device, "--model", f"{source}/data/stories260K/stories260K.bin",
          "--tokenizer", f"{source}/data/stories260K/tok512.bin",
          "--data", f"{source}/data/glue", "--task", "sst2",
          "--train.steps", "6", "--train.lr", "1e-3", "--train.eval-max", "64", "--train.max-len", "32",
          "--train.schedule", "constant", "--dist.bucket-mb", "0.05"]
methods = {
    "full": ["--method", "full"],
    "bitfit": ["--method", "bitfit"],
    "lora": ["--method", "lora", "--lora.targets", "q,k,v,o,wi,wo"],
    "lora+bitfit": ["--method", "lora+bitfit"],
    "houlsby": ["--method", "houlsby", "--houlsby.bottleneck", "8"],
    "pfeiffer": ["--method", "pfeiffer", "--pfeiffer.bottleneck", "8"],
    "parallel_adapter": ["--method", "parallel_adapter", "--parallel_adapter.bottleneck", "8"],
    "prefix": ["--method", "prefix", "--prefix.length", "4", "--prefix.hidden", "16"],
    "prompt": ["--method", "prompt", "--prompt.length", "4"],
    "ia3": ["--method", "ia3"],
    "compacter": ["--method", "compacter", "--compacter.bottleneck", "8"],
    "mam": ["--method", "mam", "--mam.prefix-length", "4", "--mam.prefix-hidden", "16", "--mam.bottleneck", "8"],
    "fish": ["--method", "fish", "--fish.samples", "64"],
    "dsee": ["--method", "dsee"],
    "lst": ["--method", "lst", "--lst.r", "4"],
    # SparseAdapter: kept values + dense biases on the wire; snip scores on data before attach (sharded).
    "sparse_adapter": ["--method", "sparse_adapter", "--houlsby.bottleneck", "8", "--sparse-adapter.samples", "16"],
    "sparse_adapter-magnitude": ["--method", "sparse_adapter", "--sparse-adapter.score", "magnitude",
                                 "--sparse-adapter.adapter", "parallel", "--parallel_adapter.bottleneck", "16"],
    # Multi-task methods on two tasks (the later --task wins): one task per batch, the same tasks on every rank.
    "shared_adapter": ["--method", "shared_adapter", "--shared_adapter.share", "down", "--shared_adapter.bottleneck", "8",
                       "--task", "sst2,cola"],
    "hyperformer": ["--method", "hyperformer", "--hyperformer.reduction-factor", "8", "--task", "sst2,cola"],
    "hyperprompt": ["--method", "hyperprompt", "--hyperprompt.length", "4", "--hyperprompt.bottleneck", "4",
                    "--task", "sst2,cola"],
    "attempt": ["--method", "attempt", "--attempt.length", "4", "--task", "sst2,cola"],
}
if device == "cuda":
    # Every method's step on the GPU is checked against the CPU by test_device; here the end-to-end path
    # (ranks, staged all-reduce, GradSync) for one method of each kind, within a GPU check's few minutes.
    methods = {k: v for k, v in methods.items() if k in ("full", "lora", "fish", "dsee", "prefix", "lst")}
failures = []

def run(np, batch, extra, tag):
    metrics = tempfile.mktemp(prefix=f"dt-{tag}-", suffix=".jsonl")
    cmd = ["mpirun", "-np", str(np), "--oversubscribe", "--bind-to", "none", binary, "train"] + common + extra + [
        "--train.batch-size", str(batch), "--metrics", metrics]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        failures.append(f"{tag}: exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        return None
    rows = [json.loads(line) for line in open(metrics)]
    os.unlink(metrics)
    trainable = int(re.search(r"trainable params: ([\d,]+)", out.stdout).group(1).replace(",", ""))
    return rows, trainable

def close(a, b, rel):
    return abs(a - b) <= rel * max(1.0, abs(a), abs(b))

for name, extra in methods.items():
    one = run(1, 8, extra, f"{name}-np1")
    two = run(2, 4, extra, f"{name}-np2")
    if not one or not two:
        continue
    (rows1, trainable), (rows2, trainable2) = one, two
    steps1 = [r for r in rows1 if "loss" in r]
    steps2 = [r for r in rows2 if "loss" in r]
    if trainable != trainable2:
        failures.append(f"{name}: trainable params differ: {trainable} vs {trainable2}")
    for a, b in zip(steps1, steps2):
        if not close(a["loss"], b["loss"], 2e-4):
            failures.append(f"{name}: step {a['step']} loss np1 {a['loss']} != np2 {b['loss']}")
    final1 = next(r for r in rows1 if r.get("final"))
    final2 = next(r for r in rows2 if r.get("final"))
    if not close(final1["trainable_l2"], final2["trainable_l2"], 1e-4):
        failures.append(f"{name}: final trainable_l2 np1 {final1['trainable_l2']} != np2 {final2['trainable_l2']}")
    # A sum of many values nearly cancels: compare it on the scale of the values, not of the sum.
    sum_tol = 1e-4 * final1["trainable_l2"] * math.sqrt(trainable)
    if abs(final1["trainable_sum"] - final2["trainable_sum"]) > sum_tol:
        failures.append(f"{name}: final trainable_sum np1 {final1['trainable_sum']} != np2 {final2['trainable_sum']}")
    cap = int(0.05 * 1024 * 1024)
    for r in steps2:
        if r["bytes_allreduced"] != 4 * trainable:
            failures.append(f"{name}: step {r['step']} bytes_allreduced {r['bytes_allreduced']} != 4 x {trainable}")
        if r["collectives"] > math.ceil(4 * trainable / cap) + 1:
            failures.append(f"{name}: step {r['step']} {r['collectives']} collectives > ceil(bytes/cap)+1")
    print(f"{name}: {trainable} trainable, losses {[round(r['loss'], 5) for r in steps2]}, "
          f"{steps2[-1]['bytes_allreduced']} B in {steps2[-1]['collectives']} collective(s) per step")

# Accumulation: np 2 × batch 2 × 2 micro-steps sees the same 8 examples per step as np 1 × batch 8,
# and communicates on the last micro-step only.
lora_np1 = run(1, 8, methods["lora"], "lora-np1-again")
accum = run(2, 2, methods["lora"] + ["--train.accum", "2"], "lora-accum")
if lora_np1 and accum:
    ref = [r for r in lora_np1[0] if "loss" in r]
    got = [r for r in accum[0] if "loss" in r]
    for a, b in zip(ref, got):
        if not close(a["loss"], b["loss"], 2e-4):
            failures.append(f"accum: step {a['step']} loss np1 {a['loss']} != np2 accum {b['loss']}")
        # The first micro-step communicates nothing: a step costs the buckets' collectives once.
        if b["collectives"] != a["collectives"] or b["bytes_allreduced"] != a["bytes_allreduced"]:
            failures.append(f"accum: step {b['step']} {b['collectives']} collectives / {b['bytes_allreduced']} B, "
                            f"want {a['collectives']} / {a['bytes_allreduced']} (last micro-step only)")
    print(f"accumulation: losses {[round(r['loss'], 5) for r in got]}")

# Start-up agreement: one rank with a different config -> every rank fails naming it, before step 1.
cmd = ["mpirun", "--oversubscribe", "--bind-to", "none",
       "-np", "1", binary, "train"] + common + methods["lora"] + [":",
       "-np", "1", binary, "train"] + common + methods["lora"] + ["--train.seed", "7"]
out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
text = out.stdout + out.stderr
if out.returncode == 0 or "start-up mismatch in 'config'" not in text or "rank 1" not in text or "step     1" in text:
    failures.append(f"mismatched config not refused before step 1 (exit {out.returncode}):\n{text[-2000:]}")
else:
    print("mismatched config refused: " + next(l for l in text.splitlines() if "start-up mismatch" in l).strip())

# Compression halves the bytes on the wire and still trains.
comp = run(2, 4, ["--method", "lora", "--dist.compress", "bf16"], "lora-bf16")
if comp:
    rows, trainable = comp
    for r in (r for r in rows if "loss" in r):
        if r["bytes_allreduced"] != 2 * trainable:
            failures.append(f"bf16: step {r['step']} bytes_allreduced {r['bytes_allreduced']} != 2 x {trainable}")

print("\n".join(failures) if failures else "all equivalences hold")
sys.exit(1 if failures else 0)
