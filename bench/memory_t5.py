#!/usr/bin/env python3
"""bench/memory_t5.py — peak RSS per rank of each method on a T5-base-shaped model (random init).

  mpirun -np 2 --bind-to core rss_wrap.py deltatune train --model t5-base --tokenizer data/tokenizers/t5-spiece.model
         --method M --train.steps S --train.batch-size 2 --train.max-len 32 --train.eval-max 4
Peak RSS = each rank's VmHWM (bench/rss_wrap.py). FISH uses --fish.select magnitude (the Fisher would
add full-size gradients of its own); LST is skipped, and listed as missing, while this binary does not
know `--method lst`. A run is skipped when the machine's MemAvailable cannot hold it (estimate below).
"""
import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

METHODS = ["full", "houlsby", "lora", "bitfit", "fish", "lst"]
EXTRA = {"fish": ["--fish.select", "magnitude"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    steps = 2 if a.quick else 5
    log = C.Log("memory_t5")
    rows = {}
    for m in METHODS:
        known, msg = C.method_known(m)
        if not known:
            rows[m] = dict(missing=msg)
            continue
        pl, _ = C.plan("t5-base", m, EXTRA.get(m, []))
        total = pl["total_bytes"] if pl else 0
        # frozen fp32 weights + (full) a private copy, gradients and two AdamW moments, per rank, x 2 ranks
        need = 2 * (total + 4 * pl["trainable_bytes"] + (total if m == "full" else 0) + 2**30) if pl else 0
        if need > C.mem_available():
            rows[m] = dict(skipped=f"needs ~{need / 2**30:.1f} GiB, MemAvailable {C.mem_available() / 2**30:.1f} GiB")
            continue
        rss = os.path.join(C.CACHE, f"mem_rss_{m}")
        metrics = os.path.join(C.CACHE, f"mem_{m}.jsonl")
        C.clean(rss)
        if os.path.exists(metrics):
            os.remove(metrics)
        rc, out = log.run(C.mpirun(2) + C.rss_wrap(C.rel(rss)) + [
            C.BIN, "train", "--model", "t5-base", "--tokenizer", C.T5_TOK, "--task", "sst2", "--method", m,
            *EXTRA.get(m, []), "--train.steps", str(steps), "--train.batch-size", "2", "--train.max-len", "32",
            "--train.eval-every", "0", "--train.eval-max", "4", "--metrics", C.rel(metrics)], check=False, timeout=900)
        if rc != 0:
            rows[m] = dict(failed=(out.strip().splitlines() or [f"rc {rc}"])[-1])
            continue
        st = C.steps_of(C.read_jsonl(metrics))
        tr = re.search(r"trainable params: ([\d,]+) \|\| all params: ([\d,]+)", out)
        rows[m] = dict(peak_rss=C.read_rss(rss, 2), step_s=C.median([s["step_time_s"] for s in st[1:]] or
                                                                   [s["step_time_s"] for s in st]),
                       trainable=int(tr.group(1).replace(",", "")) if tr else pl["trainable_params"],
                       bytes_per_step=st[-1]["bytes_allreduced"])
    full = rows.get("full", {}).get("peak_rss")
    lst = rows.get("lst", {}).get("peak_rss")
    ratio = max(lst) / max(full) if full and lst else None
    C.write_json("memory_t5.json", dict(steps=steps, methods=rows, lst_peak_vs_full=ratio, note=C.machine_note()))
    table = []
    for m, r in rows.items():
        if "peak_rss" not in r:
            table.append([f"`{m}`", r.get("missing") or r.get("skipped") or r.get("failed"), "", "", "", ""])
            continue
        gb = [x / 2**30 for x in r["peak_rss"]]
        rel_full = f"{max(r['peak_rss']) / max(full):.2f}" if full else "–"
        table.append([f"`{m}`", f"{r['trainable']:,}", f"{gb[0]:.2f} / {gb[1]:.2f}", rel_full,
                      f"{r['bytes_per_step']:,}", f"{1000 * r['step_s']:.0f}"])
    with open(os.path.join(C.RESULTS, "memory_t5.md"), "w") as f:
        f.write(f"### Peak RSS per rank, T5-base shape (random init), 2 ranks, batch 2, 32 tokens, {steps} steps\n\n")
        f.write(C.md_table(["method", "trainable", "peak RSS GiB (rank 0 / 1)", "÷ full", "bytes/step", "ms/step"],
                           table))
        f.write("\nPeak RSS is each rank's VmHWM (bench/rss_wrap.py), libtorch and the tokenized SST-2 included. "
                "FISH with `--fish.select magnitude`.\n\n" + C.machine_note() + "\n")
    log.save()


if __name__ == "__main__":
    main()
