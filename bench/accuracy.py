#!/usr/bin/env python3
"""bench/accuracy.py — SST-2 dev accuracy per method on stories260K, 2 ranks, same step budget, several seeds.

  mpirun -np 2 deltatune train --config configs/<m>.ini --train.steps S --train.seed SEED --train.eval-every 0
         --metrics F          (evaluates the whole dev set, 872 examples, at the end)
Methods: full, bitfit, lora, houlsby, fish (0.5%, mask from `deltatune mask`, the Fisher over the same
samples `train` would use), dsee, lst (listed as missing while the binary lacks it). Each method keeps
its example config's learning rate and options; steps and seeds are the same for all.
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

METHODS = ["full", "bitfit", "lora", "houlsby", "fish", "dsee", "lst"]


def config_of(m):
    p = f"configs/{m}.ini"
    return p if os.path.exists(os.path.join(C.ROOT, p)) else "configs/main.ini"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    steps, seeds, samples = (60, [42], 256) if a.quick else (300, [42, 43, 44], 1024)
    log = C.Log("accuracy")
    mask = C.fish_mask(log, samples)
    res = {}
    for m in METHODS:
        known, msg = C.method_known(m)
        if not known:
            res[m] = dict(missing=msg)
            continue
        cfg = config_of(m)
        pl, _ = C.plan(C.STORIES, m, C.method_options(cfg))
        accs, bps = [], None
        for seed in seeds:
            metrics = os.path.join(C.CACHE, f"acc_{m}_{seed}.jsonl")
            if os.path.exists(metrics):
                os.remove(metrics)
            extra = ["--fish.mask", mask] if m == "fish" else []
            rc, out = log.run(C.mpirun(2) + [C.BIN, "train", "--config", cfg, "--method", m, "--train.steps", str(steps),
                                             "--train.seed", str(seed), "--train.eval-every", "0", "--metrics",
                                             C.rel(metrics), *extra], check=False, timeout=1800)
            if rc != 0:
                res[m] = dict(failed=(out.strip().splitlines() or [f"rc {rc}"])[-1])
                break
            rows = C.read_jsonl(metrics)
            accs.append([r["eval_accuracy"] for r in rows if "eval_accuracy" in r][-1])
            bps = C.steps_of(rows)[-1]["bytes_allreduced"]
        else:
            res[m] = dict(config=cfg, accuracies=accs, mean=statistics.mean(accs),
                          std=statistics.stdev(accs) if len(accs) > 1 else 0.0,
                          trainable_params=pl["trainable_params"],
                          trainable_pct=100.0 * pl["trainable_params"] / pl["total_params"], bytes_per_step=bps)
    C.write_json("accuracy.json", dict(steps=steps, seeds=seeds, methods=res, note=C.machine_note()))
    rows = []
    for m, r in res.items():
        if "mean" not in r:
            rows.append([f"`{m}`", r.get("missing") or r.get("failed"), "", "", ""])
            continue
        rows.append([f"`{m}`", f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}", f"{r['trainable_params']:,}",
                     f"{r['trainable_pct']:.2f}", f"{r['bytes_per_step']:,}"])
    with open(os.path.join(C.RESULTS, "accuracy.md"), "w") as f:
        f.write(f"### SST-2 dev accuracy (872 examples), stories260K, 2 ranks, {steps} steps, "
                f"seeds {', '.join(map(str, seeds))} (mean ± std)\n\n")
        f.write(C.md_table(["method", "dev accuracy %", "trainable", "trainable % (of backbone)", "bytes/step/rank"],
                           rows))
        f.write("\nEach method with its `configs/<method>.ini` (learning rate, options); trainable counts include "
                "the 128-parameter `score` head. FISH keeps 0.5% by the empirical Fisher over "
                f"{samples} training examples.\n\n" + C.machine_note() + "\n")
    log.save()


if __name__ == "__main__":
    main()
