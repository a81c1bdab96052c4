#!/usr/bin/env python3
"""bench/gpu/run.py — deltatune vs PyTorch eager on one GPU, side by side, in one run.

Per model of bench/gpu/table.py (stories260K 16 x 64 fp32; T5-base 32 x 128 fp32; T5-3B 16 x 128 bf16), first
each method with ours, one process per method:
  deltatune train --device cuda --model M --tokenizer TOK --task sst2 --method X <X's options>
      --train.batch-size B --train.max-len T --train.pad-to T --train.steps 13 --train.eval-every 0
      --train.eval-max 64 --metrics F
(step time: the median of step_time_s over steps 4..13; peak: device_peak_bytes of the last step), then the
same methods in PyTorch eager (bench/gpu/torch_eager.py, one process per model: median of 10 steps after 3
warm-ups, peak torch.cuda.max_memory_allocated). Both sides pad every example to T tokens, so the shapes
match. A failed or timed-out run is a row with ours_error / torch_error, never a stop; rows not reached
within --budget-s say so. The JSON list (rows {model, method, ours_ms, torch_ms, ours_peak_gib,
torch_peak_gib, ...}) and the markdown table beside it (same name, .md) are rewritten after every run, and
the commands beside them (.commands.txt).

  python3 bench/gpu/run.py [--out bench/results/gpu.json] [--models t5-base,t5-3b] [--budget-s 300]
  python3 bench/gpu/run.py --device cpu --quick      (stories260K only, tiny batch: a smoke test)
The binary is $DELTATUNE (default build/deltatune); the eager side runs with this python. When
$DT_BASE_LD_LIBRARY_PATH is set (scripts/gpu-check.sh sets it), the eager side gets that LD_LIBRARY_PATH,
not the one holding the unpacked Debian libraries that the binary needs.
"""
import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import table as T  # noqa: E402

C = T.C
NOT_RUN = "not run: the time budget (--budget-s) was spent"
RUNNING = "killed while running (the caller's time limit)"
child = None  # the process running now: a SIGTERM to us (a timeout) ends its process group too


def run(log, cmd, timeout, env=None):
    """C.Log.run's contract (own process group, killed on timeout: rc 124), but the child is kept in
    `child`, so that the SIGTERM handler can end it: a run of ours must not outlive the benchmark."""
    global child
    text = " ".join(shlex.quote(c) for c in cmd)
    print(f"[bench:gpu] $ {text}", flush=True)
    t0 = time.time()
    try:
        child = subprocess.Popen(cmd, cwd=C.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 start_new_session=True, env=env)
    except OSError as e:  # no binary (the build failed): a row that says so
        log.append(f"# rc=127 wall=0.0s\n{text}")
        return 127, f"{cmd[0]}: {e.strerror}", 0.0
    try:
        out, _ = child.communicate(timeout=timeout)
        rc = child.returncode
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        out, _ = child.communicate()
        rc = 124
    child = None
    dt = time.time() - t0
    log.append(f"# rc={rc} wall={dt:.1f}s\n{text}")
    return rc, out, dt


def on_term(signum, _frame):
    if child is not None and child.poll() is None:
        os.killpg(child.pid, signal.SIGKILL)
    sys.exit(128 + signum)


def last_line(out, rc):
    lines = [l for l in out.strip().splitlines() if l.strip()]
    return ("timed out; last output: " if rc == 124 else f"rc {rc}: ") + (lines[-1][:300] if lines else "no output")


def parse_ours(metrics_path, warmup, steps, need_peak=True):
    """(ours_ms, ours_peak_gib, error) from a metrics file: the median step_time_s of the training
    steps warmup+1 .. warmup+steps (eval records carry no step_time_s) and the last one's device_peak_bytes."""
    if not os.path.exists(metrics_path):
        return None, None, "no metrics file"
    st = C.steps_of(C.read_jsonl(metrics_path))
    timed = st[warmup:warmup + steps]
    if not timed:
        return None, None, f"{len(st)} training steps in the metrics, none after the {warmup} warm-up steps"
    err = None if len(timed) == steps else f"only {len(timed)} timed steps"
    peak = st[-1].get("device_peak_bytes")
    if peak is None and need_peak:
        err = (err + "; " if err else "") + "no device_peak_bytes in the metrics"
    return 1000 * C.median([s["step_time_s"] for s in timed]), (peak / 2**30 if peak is not None else None), err


def ours(log, name, method, spec, args, timeout):
    metrics = os.path.join(C.CACHE, f"gpu_{name}_{method}.jsonl")
    if os.path.exists(metrics):
        os.remove(metrics)  # a metrics file is appended to, never replaced
    warmup, steps = args.warmup, args.steps
    cmd = [C.BIN, "train", "--device", args.device, *spec["ours"], "--task", "sst2", "--method", method,
           *T.OURS_METHOD[method], "--train.batch-size", str(args.batch or spec["batch"]),
           "--train.max-len", str(args.seq or spec["seq"]), "--train.pad-to", str(args.seq or spec["seq"]),
           "--train.steps", str(warmup + steps), "--train.eval-every", "0", "--train.eval-max", "64",
           "--metrics", C.rel(metrics)]
    rc, out, dt = run(log, cmd, timeout)
    row = dict(ours_cmd=" ".join(shlex.quote(c) for c in cmd), ours_wall_s=round(dt, 1))
    tr = re.search(r"trainable params: ([\d,]+) \|\| all params: ([\d,]+)", out)
    if tr:
        row.update(ours_trainable=int(tr.group(1).replace(",", "")), ours_params=int(tr.group(2).replace(",", "")))
    ms, peak, err = parse_ours(metrics, warmup, steps, need_peak=args.device != "cpu")
    row.update(ours_ms=ms, ours_peak_gib=peak)
    if rc != 0:
        row["ours_error"] = last_line(out, rc)
    elif err:
        row["ours_error"] = err
    if "ours_error" in row:
        print(out[-2000:], file=sys.stderr)
    return row


def torch_side(log, name, methods, args, timeout):
    """One torch_eager.py process for the model's methods; its rows by method (an error row each if it died)."""
    tmp = os.path.join(C.CACHE, f"gpu_torch_{name}.json")
    if os.path.exists(tmp):
        os.remove(tmp)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if "DT_BASE_LD_LIBRARY_PATH" in os.environ:
        env["LD_LIBRARY_PATH"] = os.environ["DT_BASE_LD_LIBRARY_PATH"]
    cmd = [sys.executable, "bench/gpu/torch_eager.py", "--model", name, "--methods", ",".join(methods),
           "--device", args.device, "--out", C.rel(tmp)] + (["--quick"] if args.quick else [])
    rc, out, _ = run(log, cmd, timeout, env=env)
    got = {r["method"]: r for r in (json.load(open(tmp)) if os.path.exists(tmp) else [])}
    if rc != 0:
        print(out[-3000:], file=sys.stderr)
    res = {}
    for m in methods:
        r = {k: v for k, v in got.get(m, {}).items() if k.startswith("torch_") or k == "gpu"}
        if not r:
            r = dict(torch_ms=None, torch_peak_gib=None, torch_error=last_line(out, rc))
        res[m] = r
    return res


def fmt(x, spec):
    return "–" if x is None else format(x, spec)


def write(out_path, rows, log, args):
    with open(out_path, "w") as f:
        json.dump(rows, f, indent=1)
        f.write("\n")
    md = []
    for r in rows:
        ratio = r["torch_ms"] / r["ours_ms"] if r.get("torch_ms") and r.get("ours_ms") else None
        notes = "; ".join(x for x in [r.get("ours_error") and "ours: " + r["ours_error"],
                                      r.get("torch_error") and "torch: " + r["torch_error"],
                                      r.get("torch_notes")] if x)
        md.append([r["model"], f"{r['batch']} x {r['seq']}", r["dtype"], f"`{r['method']}`", fmt(r.get("ours_ms"), ".1f"),
                   fmt(r.get("torch_ms"), ".1f"), fmt(ratio, ".2f"), fmt(r.get("ours_peak_gib"), ".2f"),
                   fmt(r.get("torch_peak_gib"), ".2f"), notes.replace("|", "/")])
    gpu = next((r["gpu"] for r in rows if r.get("gpu")), args.device)
    with open(os.path.splitext(out_path)[0] + ".md", "w") as f:
        f.write(f"### deltatune vs PyTorch eager, one process each, {gpu}\n\n")
        f.write(C.md_table(["model", "batch x tokens", "dtype", "method", "ours ms/step", "torch ms/step",
                            "torch ÷ ours", "ours peak GiB", "torch peak GiB", "notes"], md))
        f.write(f"\nStep time: the median of {args.steps} steps after {args.warmup} warm-up steps, each side's own "
                "clock around a whole step (forward, backward, clip 1.0, AdamW), every example padded to the "
                "full length. Peak: the CUDA caching allocator's peak of allocated bytes, weights included (ours: the "
                "metrics' `device_peak_bytes`, since training began; torch: `torch.cuda.max_memory_allocated()` "
                "from before the model was built). FISH: ours trains the 0.5% values at fixed indices (magnitude selection); PyTorch "
                "multiplies dense gradients by a 0/1 mask and keeps AdamW state for every weight (FISH's "
                "code). LoRA: HF PEFT, r 8, q and v. Commands: "
                f"{os.path.basename(os.path.splitext(out_path)[0])}.commands.txt. "
                f"Measured {time.strftime('%Y-%m-%d %H:%M')}.\n")
    with open(os.path.splitext(out_path)[0] + ".commands.txt", "w") as f:
        f.write("# commands run by bench/gpu/run.py (from the repository root)\n" + "\n".join(log) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(C.RESULTS, "gpu.json"))
    ap.add_argument("--models", default="", help="comma-separated subset of " + ", ".join(T.MODELS))
    ap.add_argument("--methods", default="", help="comma-separated subset of each model's methods")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="stories260K only, batch 2 x 16 tokens, 1 + 2 steps")
    ap.add_argument("--budget-s", type=float, default=0, help="stop starting runs after this many seconds (0: none)")
    ap.add_argument("--skip-ours", action="store_true")
    ap.add_argument("--skip-torch", action="store_true")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, on_term)
    args.warmup, args.steps = (1, 2) if args.quick else (T.WARMUP, T.STEPS)
    args.batch, args.seq = (2, 16) if args.quick else (None, None)
    names = args.models.split(",") if args.models else (["stories260K"] if args.quick else list(T.MODELS))
    deadline = time.time() + args.budget_s if args.budget_s else float("inf")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    # Every row exists from the start ("not run"), so a kill leaves a complete table of what was done.
    rows, log = [], []
    for name in names:
        spec = T.MODELS[name]
        for m in spec["methods"]:
            if not args.methods or m in args.methods.split(","):
                rows.append(dict(model=name, method=m, batch=args.batch or spec["batch"], seq=args.seq or spec["seq"],
                                 dtype=spec["dtype"], ours_ms=None, torch_ms=None, ours_peak_gib=None,
                                 torch_peak_gib=None, ours_error=NOT_RUN, torch_error=NOT_RUN))
    write(args.out, rows, log, args)

    def left(cap):  # a run's time limit: its own cap, or what the budget has left
        return min(cap, deadline - time.time())

    for name in names:
        spec = T.MODELS[name]
        mine = [r for r in rows if r["model"] == name]
        for r in mine:
            t = left(spec["timeout"])
            if args.skip_ours or t < 20:
                r["ours_error"] = "skipped (--skip-ours)" if args.skip_ours else NOT_RUN
                continue
            r["ours_error"] = RUNNING  # what a kill during the run leaves
            write(args.out, rows, log, args)
            r.pop("ours_error")
            r.update(ours(log, name, r["method"], spec, args, t))
            write(args.out, rows, log, args)
        t = left(spec["torch_timeout"])
        if args.skip_torch or t < 20:
            for r in mine:
                r["torch_error"] = "skipped (--skip-torch)" if args.skip_torch else NOT_RUN
            continue
        for r in mine:
            r["torch_error"] = RUNNING
        write(args.out, rows, log, args)
        for m, tr in torch_side(log, name, [r["method"] for r in mine], args, t).items():
            r = next(x for x in mine if x["method"] == m)
            r.pop("torch_error")
            r.update(tr)
        write(args.out, rows, log, args)
    write(args.out, rows, log, args)
    for r in rows:
        print(f"[bench:gpu] {r['model']:12} {r['method']:8} ours {fmt(r.get('ours_ms'), '8.1f')} ms "
              f"{fmt(r.get('ours_peak_gib'), '6.2f')} GiB | torch {fmt(r.get('torch_ms'), '8.1f')} ms "
              f"{fmt(r.get('torch_peak_gib'), '6.2f')} GiB"
              + "".join(f"  [{k}: {r[k][:120]}]" for k in ("ours_error", "torch_error") if r.get(k)))
    print(f"[bench:gpu] wrote {args.out} and its .md")


if __name__ == "__main__":
    main()
