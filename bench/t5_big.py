#!/usr/bin/python3
"""bench/t5_big.py — one FISH 0.5% training step of T5-large and T5-3B on this machine.

The backbone is a random-init T5 written once in bf16 safetensors (HF names, config in __metadata__)
into bench/.cache/ (ignored), memory-mapped by the ranks of this node:
  mpirun -np 2 --bind-to core rss_wrap.py deltatune train --model bench/.cache/t5-3b-bf16.safetensors
         --tokenizer data/tokenizers/t5-spiece.model --method fish --fish.keep 0.005 --fish.select magnitude
         --train.steps 1 --train.batch-size 1 --train.max-len 16 --train.eval-max 1 --out DIR --metrics F
Reported: the step time (metrics step_time_s), wall time, peak RSS per rank, the checkpoint's size, and
the wall split from the arrival times of rank 0's log lines: startup_s (launch to the start of step 1:
load, data, mask selection, agreement), select_s (FISH's mask selection, from its own log line),
attach_s (log "data: ... tokenized" to "trainable params", the span issue 19 measured), step_s,
checkpoint_s (the step's log line to the checkpoint's) and weights_hash_s (the start-up's sha256 of the weights
file, 0 when the cache had it; --cold-cache: rows "<model> cold-cache" start with an empty cache).
--bf16-linear native|blocked: rows "<model> native-bf16-linear" etc. with DELTATUNE_CPU_BF16_LINEAR set so
(model/cpu_bf16_linear.h; default rows leave it to the CPU), the two sides of that change in one session.

Memory guard. The loader keeps the file's bf16 tensors as the frozen weights themselves (the mapped
pages: one copy in the page cache, shared by the node's ranks; counted in each rank's RSS), and FISH's
magnitude selection reads the bf16 weights in place. What each rank holds privately is dominated by the
autograd copies W + scatter(values) of the masked weights (bf16, ~2 bytes per parameter) plus
activations and start-up. The node needs  file + ranks x (a x params + 0.5 GiB),  with `a` (private bytes
per parameter) from the last T5-large run under this memory model (2.2 before one exists); with
--fisher-samples each rank's private part is at least its share of the float32 Fisher (4 x params / ranks:
sparse/fisher.h shards it above 1 GiB) + 1.5 GiB (a 512 MiB group of gradients, squares, activations).
The run starts only when that leaves 1.5 GiB of MemAvailable; a model that does not fit is tried with 1
rank, and if that does not fit either it is reported as not run, with the arithmetic. The expected peak
RSS per rank (what rss_wrap reports: shared + private) is file + that private part. --force-np overrides.
"""
import argparse
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

CONFIGS = {  # name: d_model, d_ff, d_kv, heads, layers (T5 v1.0, ReLU, tied embeddings, vocab 32128)
    "t5-large": (1024, 4096, 64, 16, 24),
    "t5-3b": (1024, 16384, 128, 32, 24),
}
VOCAB = 32128


def describe(d, ff, dkv, H, L):
    """HF T5ForConditionalGeneration names and shapes (model/config.cpp describe_t5's order)."""
    inner = H * dkv
    out = [("shared.weight", (VOCAB, d))]

    def attn(p, bias):
        out.extend([(p + ".q.weight", (inner, d)), (p + ".k.weight", (inner, d)), (p + ".v.weight", (inner, d)),
                    (p + ".o.weight", (d, inner))])
        if bias:
            out.append((p + ".relative_attention_bias.weight", (32, H)))

    def ffn(p):
        out.extend([(p + ".DenseReluDense.wi.weight", (ff, d)), (p + ".DenseReluDense.wo.weight", (d, ff)),
                    (p + ".layer_norm.weight", (d,))])
    for i in range(L):
        b = f"encoder.block.{i}"
        attn(b + ".layer.0.SelfAttention", i == 0)
        out.append((b + ".layer.0.layer_norm.weight", (d,)))
        ffn(b + ".layer.1")
    out.append(("encoder.final_layer_norm.weight", (d,)))
    for i in range(L):
        b = f"decoder.block.{i}"
        attn(b + ".layer.0.SelfAttention", i == 0)
        out.append((b + ".layer.0.layer_norm.weight", (d,)))
        attn(b + ".layer.1.EncDecAttention", False)
        out.append((b + ".layer.1.layer_norm.weight", (d,)))
        ffn(b + ".layer.2")
    out.append(("decoder.final_layer_norm.weight", (d,)))
    return out


def write_bf16(name, path):
    """Random init as HF's T5PreTrainedModel._init_weights (factor 1), streamed tensor by tensor."""
    import torch
    d, ff, dkv, H, L = CONFIGS[name]
    tensors = describe(d, ff, dkv, H, L)
    header, off = {}, 0
    for n, shape in tensors:
        size = 2
        for s in shape:
            size *= s
        header[n] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + size]}
        off += size
    header["__metadata__"] = {"architecture": "t5", "vocab_size": str(VOCAB), "d_model": str(d), "d_ff": str(ff),
                              "d_kv": str(dkv), "num_heads": str(H), "num_layers": str(L),
                              "num_decoder_layers": str(L), "relative_attention_num_buckets": "32",
                              "relative_attention_max_distance": "128", "layer_norm_epsilon": "1e-06",
                              "feed_forward_proj": "relu", "tie_word_embeddings": "true", "torch_dtype": "bfloat16"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    g = torch.Generator().manual_seed(0)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for n, shape in tensors:
            if n.endswith("layer_norm.weight"):
                t = torch.ones(shape)
            else:
                std = 1.0 if n == "shared.weight" else (
                    (d * dkv) ** -0.5 if n.endswith(".q.weight") else (H * dkv) ** -0.5 if n.endswith(".o.weight")
                    else ff ** -0.5 if n.endswith(".wo.weight") else d ** -0.5)
                t = torch.empty(shape).normal_(0.0, std, generator=g)
            f.write(t.to(torch.bfloat16).view(torch.int16).numpy().tobytes())
    os.replace(tmp, path)
    return sum(int(torch.tensor(s).prod()) for _, s in tensors)


def params_of(name):
    d, ff, dkv, H, L = CONFIGS[name]
    total = 0
    for _, shape in describe(d, ff, dkv, H, L):
        n = 1
        for s in shape:
            n *= s
        total += n
    return total


def run_timed(log, cmd, timeout):
    """As common.Log.run, but keeps the arrival time of every output line (ranks flush per line)."""
    text = " ".join(shlex.quote(c) for c in cmd)
    print(f"[bench:{log.part}] $ {text}", flush=True)
    t0 = time.time()
    p = subprocess.Popen(cmd, cwd=C.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    lines = []

    def read():
        for line in p.stdout:
            lines.append((time.time() - t0, line.rstrip("\n")))
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        rc = 124
        p.wait()
    reader.join(timeout=10)
    log.lines.append(f"# rc={rc} wall={time.time() - t0:.1f}s\n{text}")
    if rc != 0:
        print("\n".join(l for _, l in lines[-40:]), file=sys.stderr)
    return rc, lines


def phases(lines, step_s):
    """The wall split of one run from its timed log lines (seconds; None where a line is missing)."""
    def first(pattern):
        for t, line in lines:
            m = re.search(pattern, line)
            if m:
                return t, m
        return None, None
    t_data, _ = first(r"^\[rank 0\] data: .* tokenized")
    t_params, _ = first(r"^\[rank 0\] trainable params")
    _, sel = first(r"^\[rank 0\] fish: \w+ selection .*: scores ([0-9.]+) s, top-k ([0-9.]+) s")
    t_step, _ = first(r"^\[rank 0\] step +1/")
    t_ckpt, _ = first(r"^\[rank 0\] checkpoint ")
    _, hashed = first(r"^\[rank 0\] backbone: .* sha256 \w+ hashed in ([0-9.]+) s")
    _, cached = first(r"^\[rank 0\] backbone: .* sha256 \w+ \(cached")
    out = dict(select_s=float(sel.group(1)) + float(sel.group(2)) if sel else None,
               attach_s=t_params - t_data if t_data is not None and t_params is not None else None,
               startup_s=t_step - step_s if t_step is not None else None,
               checkpoint_s=t_ckpt - t_step if t_ckpt is not None and t_step is not None else None,
               # the weights file's sha256 at start-up (launch/task_model.h identify_frozen): 0 from the cache
               weights_hash_s=float(hashed.group(1)) if hashed else 0.0 if cached else None)
    return out


def run(log, name, np_, path, samples=0, cold=False, linear=""):
    """One training step; samples > 0: FISH's Fisher selection over that many examples, else magnitude.
    cold: an empty sha256 cache (DELTATUNE_CACHE), so start-up hashes the weights file as a node's first run does."""
    key = row_key(name, samples, cold, linear)
    env = [f"DELTATUNE_CPU_BF16_LINEAR={linear}"] if linear else []
    if cold:
        cache = os.path.join(C.CACHE, "sha256_cold")
        shutil.rmtree(cache, ignore_errors=True)
        os.makedirs(cache)
        env.append(f"DELTATUNE_CACHE={cache}")
    out_dir = os.path.join(C.CACHE, f"ckpt_{key}")
    rss = os.path.join(C.CACHE, f"big_rss_{key}")
    metrics = os.path.join(C.CACHE, f"big_{key}.jsonl")
    for p in glob.glob(os.path.join(out_dir, "*")):
        os.remove(p) if os.path.isfile(p) else None
    C.clean(rss)
    if os.path.exists(metrics):
        os.remove(metrics)
    t0 = time.time()
    rc, lines = run_timed(log, C.mpirun(np_, env=env) + C.rss_wrap(C.rel(rss)) + [
        C.BIN, "train", "--model", C.rel(path), "--tokenizer", C.T5_TOK, "--task", "sst2", "--method", "fish",
        "--fish.keep", "0.005"] + (["--fish.select", "fisher", "--fish.samples", str(samples)] if samples else
                                   ["--fish.select", "magnitude"]) + ["--train.steps", "1", "--train.batch-size", "1",
        "--train.max-len", "16", "--train.eval-every", "0", "--train.eval-max", "1", "--out", C.rel(out_dir),
        "--metrics", C.rel(metrics)], timeout=1800)
    wall = time.time() - t0
    if rc != 0:
        return dict(failed=(lines[-1][1] if lines else f"rc {rc}"), ranks=np_, wall_s=wall)
    st = C.steps_of(C.read_jsonl(metrics))
    ckpts = sorted(glob.glob(os.path.join(out_dir, "*.h5")))
    return dict(ranks=np_, step_s=st[0]["step_time_s"], wall_s=wall, **phases(lines, st[0]["step_time_s"]),
                peak_rss=C.read_rss(rss, np_),
                bytes_per_step=st[0]["bytes_allreduced"], checkpoint=C.rel(ckpts[-1]) if ckpts else None,
                checkpoint_bytes=os.path.getsize(ckpts[-1]) if ckpts else None, params=params_of(name))


def row_key(name, samples, cold=False, linear=""):
    return ((f"{name} fisher({samples})" if samples else name) + (" cold-cache" if cold else "") +
            (f" {linear}-bf16-linear" if linear else ""))


def cpu_note():
    """The CPU model and whether it has bf16 arithmetic (what model/cpu_bf16_linear.h decides by)."""
    model, flags = "unknown CPU", set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    bf16 = [x for x in ("avx512_bf16", "amx_bf16") if x in flags]
    return f"{model}, " + (" + ".join(bf16) if bf16 else "no AVX512-BF16/AMX-BF16")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="T5-large only; T5-3B's entry is kept from the last run")
    ap.add_argument("--force-np", type=int)
    ap.add_argument("--models", default="", help="comma-separated subset (default: t5-large, and t5-3b unless --quick)")
    ap.add_argument("--fisher-samples", type=int, default=0,
                    help="N > 0: rows with FISH's Fisher selection over N examples instead of magnitude")
    ap.add_argument("--cold-cache", action="store_true",
                    help="rows '<model> cold-cache': start-up with an empty sha256 cache (hashes the weights file)")
    ap.add_argument("--bf16-linear", choices=["native", "blocked"], default="",
                    help="rows '<model> native-bf16-linear' / 'blocked-bf16-linear': DELTATUNE_CPU_BF16_LINEAR set so "
                         "(default: unset, the CPU decides; model/cpu_bf16_linear.h)")
    a = ap.parse_args()
    log = C.Log("t5_big")
    res_path = os.path.join(C.RESULTS, "t5_big.json")
    old = json.load(open(res_path)) if os.path.exists(res_path) else {}
    res = dict(old.get("models", {}))
    MODEL = "mapped-bf16"  # the memory model of the entries this version measures
    private_pp = None  # measured private bytes per parameter (T5-large, mapped bf16), for the guard
    tl = res.get("t5-large", {})
    if "peak_rss" in tl and tl.get("memory_model") == MODEL:
        private_pp = max(0.0, (max(tl["peak_rss"]) - tl["file_bytes"] - 0.5 * 2**30) / tl["params"])
    names = a.models.split(",") if a.models else (["t5-large"] if a.quick else ["t5-large", "t5-3b"])
    for name in names:
        P = params_of(name)
        file_b = 2 * P  # bf16, shared by the ranks
        train_private = (private_pp if private_pp is not None else 2.2) * P + 0.5 * 2**30

        def private(n):
            # The Fisher pass comes before training's copies exist: over n > 1 ranks each keeps the float32
            # Fisher of its share of the top-k's tensors (--fish.fisher-shard auto: sharded above 1 GiB),
            # plus one group of bf16 gradients (512 MiB), a tensor's float32 squares and activations.
            if not a.fisher_samples:
                return train_private
            fisher = 4 * P / (n if 4 * P > 2**30 and n > 1 else 1)
            return max(train_private, fisher + 1.5 * 2**30)

        key = row_key(name, a.fisher_samples, a.cold_cache, a.bf16_linear)
        avail = C.mem_available()
        need = lambda n: file_b + n * private(n)  # noqa: E731
        margin = 1.5 * 2**30
        np_ = a.force_np or (2 if need(2) + margin < avail else 1 if need(1) + margin < avail else 0)
        if np_ == 0:
            res[key] = dict(not_run=f"expected {need(2) / 2**30:.1f} GiB for 2 ranks, {need(1) / 2**30:.1f} GiB for 1 "
                             f"({file_b / 2**30:.1f} GiB mapped bf16 file + per rank the larger of the W + scatter "
                             f"copies of the masked weights + activations" + (" and the float32 Fisher of its share "
                                                                               "of the weights + a group of gradients"
                                                                               if a.fisher_samples else "")
                             + f"); MemAvailable {avail / 2**30:.1f} GiB of "
                             f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
                             params=P, measured_at=time.strftime("%Y-%m-%d %H:%M"))
            continue
        path = os.path.join(C.CACHE, f"{name}-bf16.safetensors")
        if not os.path.exists(path):
            t0 = time.time()
            write_bf16(name, path)
            log.lines.append(f"# wrote {C.rel(path)} ({os.path.getsize(path):,} bytes) in {time.time() - t0:.0f} s "
                             f"with bench/t5_big.py:write_bf16")
        r = run(log, name, np_, path, a.fisher_samples, a.cold_cache, a.bf16_linear)
        r.update(cpu=cpu_note(), expected_peak_per_rank=file_b + private(np_), expected_node_bytes=need(np_), mem_available=avail,
                 file_bytes=os.path.getsize(path), memory_model=MODEL,
                 measured_at=time.strftime("%Y-%m-%d %H:%M"), note=C.machine_note())
        if np_ < 2 and "failed" not in r:
            r["why_fewer_ranks"] = (f"2 ranks need ~{need(2) / 2**30:.1f} GiB (+1.5 GiB margin), MemAvailable "
                                    f"{avail / 2**30:.1f} GiB")
        res[key] = r
        if "peak_rss" in r and key == "t5-large":
            private_pp = max(0.0, (max(r["peak_rss"]) - r["file_bytes"] - 0.5 * 2**30) / P)
    C.write_json("t5_big.json", dict(models=res))
    rows = []
    for name, r in res.items():
        if "peak_rss" in r:
            sec = lambda key: f"{r[key]:.1f}" if r.get(key) is not None else "–"  # noqa: E731
            rows.append([name, f"{r['params']:,}", r["ranks"], sec("startup_s"), sec("weights_hash_s"), sec("select_s"),
                         sec("step_s"),
                         sec("checkpoint_s"), f"{r['wall_s']:.0f}",
                         " / ".join(f"{x / 2**30:.2f}" for x in r["peak_rss"]), f"{r['bytes_per_step']:,}",
                         f"{r['checkpoint_bytes'] / 1e6:.1f} MB" if r.get("checkpoint_bytes") else "–",
                         r.get("measured_at", "")])
        else:
            rows.append([name, f"{r.get('params', 0):,}", "–", "–", "–", "–", "–", "–", "–", "–", "–", "–",
                         "not run: " + (r.get("not_run") or r.get("failed", ""))])
    cpus = sorted({r["cpu"] for r in res.values() if r.get("cpu")})
    with open(os.path.join(C.RESULTS, "t5_big.md"), "w") as f:
        f.write("### One FISH 0.5% step (magnitude selection; Fisher over N examples in the rows marked fisher(N)), "
                "random-init bf16 backbone, batch 1, 16 tokens\n\n")
        f.write(C.md_table(["model", "params", "ranks", "start-up s", "weights sha256 s", "select s", "step s",
                            "checkpoint s",
                            "wall s", "peak RSS GiB per rank",
                            "bytes/step", "checkpoint", "measured"], rows))
        f.write("\nThe bf16 file is memory-mapped by every rank and its tensors are the frozen weights themselves "
                "(bf16, no per-rank copy: the pages are shared through the page cache, and each rank's peak RSS "
                "counts them — the node holds the file once plus each rank's private part). The forward computes "
                "in bf16 (norm variance, softmax, logits and loss in float32; on a CPU without bf16 arithmetic "
                "each linear upcasts W 1 MiB at a time and accumulates in float32, model/cpu_bf16_linear.h — rows "
                "marked native-bf16-linear / blocked-bf16-linear force ATen's own bf16 path / the upcasting one); magnitude selection reads the bf16 "
                "weights in place (sparse/magnitude.h). Start-up is launch to the start of step 1 (selection "
                "included); weights sha256 is the start-up's hash of the file (0: from the cache, rows marked "
                "cold-cache start with an empty one, as a node's first run does); select is FISH's mask selection alone (its own log line), checkpoint is the step's log "
                "line to the checkpoint's: arrival times of rank 0's log lines. What remains private per rank is "
                "mostly the bf16 copies W + scatter(values) of "
                "the masked weights that autograd keeps until the backward, plus activations. The "
                "rows marked fisher(N) select from the Fisher of N examples, sharded over the ranks "
                "(sparse/fisher.h: each rank keeps its share of the top-k's tensors, gradients in 512 MiB groups). "
                "CPU: " + ("; ".join(cpus) if cpus else "not recorded") + ". " + C.GPU_NOTE + "\n")
    log.save()


if __name__ == "__main__":
    main()
