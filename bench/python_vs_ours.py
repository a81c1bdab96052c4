#!/usr/bin/env python3
"""bench/python_vs_ours.py — deltatune vs PyTorch DDP (gloo), side by side, 2 ranks, SST-2, on stories260K and
on the real all-MiniLM-L6-v2 (python: transformers' BertForSequenceClassification, LoRA by HF PEFT).

  bench/python_vs_ours.py [--quick] [--models stories260K,minilm]

Per model, method (full, lora, fish) and round, both run the same steps back to back under the same mpirun
binding (--bind-to core, one torch thread per rank):
  ours:   mpirun ... rss_wrap.py deltatune train --config configs/<m>.ini (MiniLM: configs/minilm-<m>.ini)
          --metrics ... (Open MPI monitoring)
  python: mpirun ... .venv/bin/python bench/py_ddp.py --method <m> [--model DIR] (same lr, warm-up, batch, max-len)
Step time: median over the steps after the first 5 (each side's own clock around one whole step:
batch, forward, backward + all-reduce, clip, AdamW, the loss all-reduce); the ratio python/ours is
taken per round and the median over rounds reported. Bytes per step: ours from Open MPI's monitoring
(the larger rank's `I` bytes / steps, start-up included), python 4 x parameters requiring grad (what
DDP's buckets all-reduce). Peak RSS per rank: VmHWM of each rank's process.
Python is the venv's torch (2.11); the stories260K numbers measured with torch 1.13 (Debian's python3-torch)
before the venv existed are kept in python_vs_ours.torch-1.13.{md,json} and set beside the new ones.
"""
import argparse
import json
import os
import socket
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

# Per model: its configs, and the same values for py_ddp.py (lr, LoRA alpha, warm-up) as those configs hold.
MODELS = {
    "stories260K": dict(config="configs/{}.ini", lr={"full": 1e-3, "lora": 3e-3, "fish": 3e-3}, alpha=16, warmup=30,
                        py_model="stories260K", model=C.STORIES, tokenizer=C.TOK),
    "minilm": dict(config="configs/minilm-{}.ini", lr={"full": 5e-5, "lora": 2e-3, "fish": 5e-4}, alpha=8, warmup=25,
                   py_model="models/all-minilm-l6-v2", model="models/all-minilm-l6-v2",
                   tokenizer="models/all-minilm-l6-v2/vocab.txt"),
}
SKIP = 5


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run_ours(log, spec, m, steps, mask, tag, np_=2):
    prof = os.path.join(C.CACHE, f"pvo_mon_{m}_{tag}")
    rss = os.path.join(C.CACHE, f"pvo_rss_{m}_{tag}")
    metrics = os.path.join(C.CACHE, f"pvo_{m}_{tag}.jsonl")
    C.clean(prof)
    C.clean(rss)
    if os.path.exists(metrics):
        os.remove(metrics)
    extra = ["--fish.mask", mask] if m == "fish" else []
    log.run(C.mpirun(np_, monitor=C.rel(prof)) + C.rss_wrap(C.rel(rss)) + [
        C.BIN, "train", "--config", spec["config"].format(m), "--train.steps", str(steps), "--train.eval-every", "0",
        "--threads", "1",
        "--train.eval-max", "64", "--metrics", C.rel(metrics), *extra])
    st = C.steps_of(C.read_jsonl(metrics))
    mon = C.monitoring_bytes(prof, np_)
    return dict(step_s=C.median([s["step_time_s"] for s in st[SKIP:]]), bytes_per_step=max(mon) / steps,
                counter_bytes_per_step=st[-1]["bytes_allreduced"], peak_rss=C.read_rss(rss, np_),
                loss_first=st[0]["loss"], loss_last=st[-1]["loss"])


def run_python(log, spec, m, steps, fish_samples, tag, np_=2):
    out = os.path.join(C.CACHE, f"pvo_py_{m}_{tag}.json")
    for attempt in range(2):  # a rare gloo rendezvous hang on this shared box: time out, retry once
        rc, _ = log.run(C.mpirun(np_) + [C.PY, "bench/py_ddp.py", "--method", m, "--model", spec["py_model"],
                           "--steps", str(steps), "--lr", str(spec["lr"][m]), "--lora-alpha", str(spec["alpha"]),
                           "--warmup", str(spec["warmup"]), "--batch-size", "16", "--max-len", "64", "--threads", "1",
                           "--fish-samples", str(fish_samples), "--port", str(free_port()), "--out", C.rel(out)],
                        check=attempt == 1, timeout=600)
        if rc == 0:
            break
    with open(out) as f:
        d = json.load(f)
    return dict(step_s=C.median(d["step_time_s"][SKIP:]), bytes_per_step=d["bytes_per_step"],
                peak_rss=d["peak_rss_bytes"], loss_first=d["loss"][0], loss_last=d["loss"][-1],
                params_requiring_grad=d["params_requiring_grad"])


def measure(log, name, steps, rounds, samples):
    spec = MODELS[name]
    mask = C.fish_mask(log, samples, model=spec["model"], tokenizer=spec["tokenizer"], name=name)
    res = {}
    for m in ["full", "lora", "fish"]:
        runs = []
        for r in range(rounds):
            ours = run_ours(log, spec, m, steps, mask, f"{name}_{r}")
            py = run_python(log, spec, m, steps, samples, f"{name}_{r}")
            runs.append(dict(ours=ours, python=py, step_time_python_over_ours=py["step_s"] / ours["step_s"]))
        # One rank each (no communication, no peer to wait for): how much of a difference is compute.
        o1 = run_ours(log, spec, m, steps, mask, f"{name}_np1", np_=1)
        p1 = run_python(log, spec, m, steps, samples, f"{name}_np1", np_=1)
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
    return res


def tables(name, res):
    mb = lambda b: f"{b / 2**20:.0f}"  # noqa: E731
    rows = [[f"`{m}`", f"{r['ours_step_ms']:.1f}", f"{r['python_step_ms']:.1f}",
             f"**{r['step_time_python_over_ours']:.2f}**", f"{r['ours_bytes_per_step']:,.0f}",
             f"{r['python_bytes_per_step']:,}", f"**{r['bytes_ours_over_python']:.4f}**",
             " / ".join(mb(x) for x in r["ours_peak_rss"]), " / ".join(mb(x) for x in r["python_peak_rss"])]
            for m, r in res.items()]
    rows1 = [[f"`{m}`", f"{r['single_rank']['ours_step_ms']:.1f}", f"{r['single_rank']['python_step_ms']:.1f}",
              f"{r['single_rank']['python_over_ours']:.2f}"] for m, r in res.items()]
    return (C.md_table(["method", "ours ms/step", "python ms/step", "python ÷ ours (time)", "ours B/step (Open MPI)",
                        "python B/step (DDP buckets)", "ours ÷ python (bytes)", "ours peak RSS MiB (rank 0 / 1)",
                        "python peak RSS MiB (rank 0 / 1)"], rows) +
            f"\nThe same, one rank each ({name}; compute only: no all-reduce, no peer to wait for):\n\n" +
            C.md_table(["method", "ours ms/step (1 rank)", "python ms/step (1 rank)", "python ÷ ours"], rows1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", default="stories260K,minilm")
    a = ap.parse_args()
    names = a.models.split(",")
    log = C.Log("python_vs_ours")
    results, settings = {}, {}
    for name in names:
        if name not in MODELS:
            sys.exit(f"python_vs_ours.py: unknown model '{name}' ({', '.join(MODELS)})")
        # MiniLM steps cost ~10x stories260K's: fewer of them (the medians settle within 20 steps).
        steps, rounds, samples = ((25, 2, 256) if a.quick else (100, 3, 1024)) if name == "stories260K" else \
            ((15, 1, 64) if a.quick else (30, 2, 256))
        settings[name] = dict(steps=steps, rounds=rounds, fish_samples=samples)
        results[name] = measure(log, name, steps, rounds, samples)
    torch_now = C.torch_version()
    previous_path = os.path.join(C.RESULTS, "python_vs_ours.torch-1.13.json")
    previous = json.load(open(previous_path)) if os.path.exists(previous_path) else {}
    out = dict(torch=torch_now, settings=settings, note=C.machine_note(),
               previous_torch_1_13={m: r["step_time_python_over_ours"] for m, r in previous.get("methods", {}).items()})
    if "stories260K" in results:
        out["methods"] = results["stories260K"]  # (summary.json's step_time_python_over_ours reads these)
        out["steps"], out["rounds"] = settings["stories260K"]["steps"], settings["stories260K"]["rounds"]
    if "minilm" in results:
        out["minilm"] = dict(methods=results["minilm"], **settings["minilm"])
    C.write_json("python_vs_ours.json", out)
    with open(os.path.join(C.RESULTS, "python_vs_ours.md"), "w") as f:
        for name, res in results.items():
            st = settings[name]
            f.write(f"### deltatune vs PyTorch {torch_now} DDP (gloo), {name} + SST-2, 2 ranks, {st['steps']} steps × "
                    f"{st['rounds']} round(s)\n\n" + tables(name, res) + "\n")
        if out["previous_torch_1_13"] and "stories260K" in results:
            f.write("### python ÷ ours step time on stories260K, both Python versions\n\n")
            f.write(C.md_table(["method", "torch 1.13 (Debian, " + previous.get("note", "")[9:25] + ")",
                                f"torch {torch_now} (venv, now)"],
                               [[f"`{m}`", f"{out['previous_torch_1_13'].get(m, float('nan')):.2f}",
                                 f"{results['stories260K'][m]['step_time_python_over_ours']:.2f}"]
                                for m in results["stories260K"]]))
            f.write("\n(torch 1.13's table: python_vs_ours.torch-1.13.md; our binary then linked libtorch 1.13 too.)\n\n")
        f.write("Step times are medians after the first 5 steps, one torch thread per rank, `--bind-to core`; the "
                "ratio is the median over rounds of per-round ratios (each round runs ours and python back to back). "
                "Python: torch " + torch_now + ", `bench/py_ddp.py` (MiniLM: transformers + HF PEFT); FISH there masks "
                "dense gradients after backward, so DDP moves every parameter's gradient.\n\n" + C.machine_note() + "\n")
    log.save()


if __name__ == "__main__":
    main()
