#!/usr/bin/env python3
"""bench/python_vs_ours.py — deltatune vs PyTorch DDP (gloo), side by side, 2 ranks, stories260K + SST-2.

Per method (full, lora, fish) and round, both run the same steps back to back under the same mpirun
binding (--bind-to core, one torch thread per rank):
  ours:   mpirun ... rss_wrap.py deltatune train --config configs/<m>.ini --metrics ... (Open MPI monitoring)
  python: mpirun ... .venv/bin/python bench/py_ddp.py --method <m> (same lr, warm-up, batch, max-len)
Step time: median over the steps after the first 5 (each side's own clock around one whole step:
batch, forward, backward + all-reduce, clip, AdamW, the loss all-reduce); the ratio python/ours is
taken per round and the median over rounds reported. Bytes per step: ours from Open MPI's monitoring
(the larger rank's `I` bytes / steps, start-up included), python 4 x parameters requiring grad (what
DDP's buckets all-reduce). Peak RSS per rank: VmHWM of each rank's process.
"""
import argparse
import json
import os
import socket
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

LR = {"full": 1e-3, "lora": 3e-3, "fish": 3e-3}   # configs/<m>.ini
SKIP = 5


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run_ours(log, m, steps, mask, tag, np_=2):
    prof = os.path.join(C.CACHE, f"pvo_mon_{m}_{tag}")
    rss = os.path.join(C.CACHE, f"pvo_rss_{m}_{tag}")
    metrics = os.path.join(C.CACHE, f"pvo_{m}_{tag}.jsonl")
    C.clean(prof)
    C.clean(rss)
    if os.path.exists(metrics):
        os.remove(metrics)
    extra = ["--fish.mask", mask] if m == "fish" else []
    log.run(C.mpirun(np_, monitor=C.rel(prof)) + C.rss_wrap(C.rel(rss)) + [
        C.BIN, "train", "--config", f"configs/{m}.ini", "--train.steps", str(steps), "--train.eval-every", "0",
        "--threads", "1",
        "--train.eval-max", "64", "--metrics", C.rel(metrics), *extra])
    st = C.steps_of(C.read_jsonl(metrics))
    mon = C.monitoring_bytes(prof, np_)
    return dict(step_s=C.median([s["step_time_s"] for s in st[SKIP:]]), bytes_per_step=max(mon) / steps,
                counter_bytes_per_step=st[-1]["bytes_allreduced"], peak_rss=C.read_rss(rss, np_),
                loss_first=st[0]["loss"], loss_last=st[-1]["loss"])


def run_python(log, m, steps, fish_samples, tag, np_=2):
    out = os.path.join(C.CACHE, f"pvo_py_{m}_{tag}.json")
    for attempt in range(2):  # a rare gloo rendezvous hang on this shared box: time out, retry once
        rc, _ = log.run(C.mpirun(np_) + [C.PY, "bench/py_ddp.py", "--method", m, "--steps", str(steps), "--lr", str(LR[m]),
                           "--warmup", "30", "--batch-size", "16", "--max-len", "64", "--threads", "1",
                           "--fish-samples", str(fish_samples), "--port", str(free_port()), "--out", C.rel(out)],
                        check=attempt == 1, timeout=600)
        if rc == 0:
            break
    with open(out) as f:
        d = json.load(f)
    return dict(step_s=C.median(d["step_time_s"][SKIP:]), bytes_per_step=d["bytes_per_step"],
                peak_rss=d["peak_rss_bytes"], loss_first=d["loss"][0], loss_last=d["loss"][-1],
                params_requiring_grad=d["params_requiring_grad"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    steps, rounds, samples = (25, 2, 256) if a.quick else (100, 3, 1024)
    log = C.Log("python_vs_ours")
    mask = C.fish_mask(log, samples)
    res = {}
    for m in ["full", "lora", "fish"]:
        runs = []
        for r in range(rounds):
            ours = run_ours(log, m, steps, mask, r)
            py = run_python(log, m, steps, samples, r)
            runs.append(dict(ours=ours, python=py, step_time_python_over_ours=py["step_s"] / ours["step_s"]))
        # One rank each (no communication, no peer to wait for): how much of a difference is compute.
        o1 = run_ours(log, m, steps, mask, "np1", np_=1)
        p1 = run_python(log, m, steps, samples, "np1", np_=1)
        res[m] = dict(runs=runs,
                      step_time_python_over_ours=statistics.median(x["step_time_python_over_ours"] for x in runs),
                      ours_step_ms=1000 * statistics.median(x["ours"]["step_s"] for x in runs),
                      python_step_ms=1000 * statistics.median(x["python"]["step_s"] for x in runs),
                      ours_bytes_per_step=runs[-1]["ours"]["bytes_per_step"],
                      python_bytes_per_step=runs[-1]["python"]["bytes_per_step"],
                      bytes_ours_over_python=runs[-1]["ours"]["bytes_per_step"] / runs[-1]["python"]["bytes_per_step"],
                      single_rank=dict(ours_step_ms=1000 * o1["step_s"], python_step_ms=1000 * p1["step_s"],
                                       python_over_ours=p1["step_s"] / o1["step_s"]),
                      ours_peak_rss=[max(x["ours"]["peak_rss"][i] for x in runs) for i in range(2)],
                      python_peak_rss=[max(x["python"]["peak_rss"][i] for x in runs) for i in range(2)])
    C.write_json("python_vs_ours.json", dict(steps=steps, rounds=rounds, methods=res, note=C.machine_note()))
    rows = []
    mb = lambda b: f"{b / 2**20:.0f}"  # noqa: E731
    for m, r in res.items():
        rows.append([f"`{m}`", f"{r['ours_step_ms']:.1f}", f"{r['python_step_ms']:.1f}",
                     f"**{r['step_time_python_over_ours']:.2f}**", f"{r['ours_bytes_per_step']:,.0f}",
                     f"{r['python_bytes_per_step']:,}", f"**{r['bytes_ours_over_python']:.4f}**",
                     " / ".join(mb(x) for x in r["ours_peak_rss"]), " / ".join(mb(x) for x in r["python_peak_rss"])])
    rows1 = [[f"`{m}`", f"{r['single_rank']['ours_step_ms']:.1f}", f"{r['single_rank']['python_step_ms']:.1f}",
              f"{r['single_rank']['python_over_ours']:.2f}"] for m, r in res.items()]
    with open(os.path.join(C.RESULTS, "python_vs_ours.md"), "w") as f:
        f.write(f"### deltatune vs PyTorch DDP (gloo), stories260K + SST-2, 2 ranks, {steps} steps × {rounds} round(s)\n\n")
        f.write(C.md_table(["method", "ours ms/step", "python ms/step", "python ÷ ours (time)",
                            "ours B/step (Open MPI)", "python B/step (DDP buckets)", "ours ÷ python (bytes)",
                            "ours peak RSS MiB (rank 0 / 1)", "python peak RSS MiB (rank 0 / 1)"], rows))
        f.write("\nThe same, one rank each (compute only: no all-reduce, no peer to wait for):\n\n")
        f.write(C.md_table(["method", "ours ms/step (1 rank)", "python ms/step (1 rank)", "python ÷ ours"], rows1))
        f.write("\nStep times are medians after the first 5 steps, one torch thread per rank, `--bind-to core`; the "
                "ratio is the median over rounds of per-round ratios (each round runs ours and python back to back). "
                "Python: torch " + C.torch_version() + ", `bench/py_ddp.py`; FISH there masks dense gradients "
                "after backward, so DDP moves every parameter's gradient.\n\n" + C.machine_note() + "\n")
    log.save()


if __name__ == "__main__":
    main()
