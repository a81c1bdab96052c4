#!/usr/bin/env python3
"""bench/memory_t5.py — peak RSS per rank of each method on a T5-base-shaped model (random init).

  mpirun -np 2 --bind-to core rss_wrap.py deltatune train --model t5-base --tokenizer data/tokenizers/t5-spiece.model
         --method M --train.steps S --train.batch-size 2 --train.max-len 32 --train.eval-max 4
Peak RSS = each rank's VmHWM (bench/rss_wrap.py). FISH uses --fish.select magnitude (the Fisher would
add full-size gradients of its own); LST is skipped, and listed as missing, while this binary does not
know `--method lst`. A run is skipped when the machine's MemAvailable cannot hold it (estimate below).

  bench/memory_t5.py --shape 32x128 --ranks 1 --methods full,lora,houlsby,lst --steps 2 --tag 32x128
writes memory_t5_32x128.{json,md}: the LST paper's comparison at the GPU benchmark's shape (batch 32 x 128
tokens, one rank, both cores), where activations, not optimizer state, decide.
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
    ap.add_argument("--shape", default="2x32", help="batch x tokens per rank (every example padded to the tokens)")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--steps", type=int, default=0, help="0: 2 with --quick, else 5")
    ap.add_argument("--tag", default="", help="results go to memory_t5[_TAG].{json,md}")
    a = ap.parse_args()
    steps = a.steps or (2 if a.quick else 5)
    batch, tokens = (int(x) for x in a.shape.split("x"))
    ranks = a.ranks
    name = "memory_t5" + (f"_{a.tag}" if a.tag else "")
    # One rank gets the machine's cores (unbound); several keep mpirun's core binding.
    shape_args = ["--train.batch-size", str(batch), "--train.max-len", str(tokens)]
    if a.shape != "2x32":
        shape_args += ["--train.pad-to", str(tokens)]
    log = C.Log(name)
    rows = {}
    for m in a.methods.split(","):
        known, msg = C.method_known(m)
        if not known:
            rows[m] = dict(missing=msg)
            continue
        pl, _ = C.plan("t5-base", m, EXTRA.get(m, []))
        total = pl["total_bytes"] if pl else 0
        # frozen fp32 weights + (full) a private copy, gradients and two AdamW moments, per rank, x 2 ranks
        need = ranks * (total + 4 * pl["trainable_bytes"] + (total if m == "full" else 0) + 2**30) if pl else 0
        if need > C.mem_available():
            rows[m] = dict(skipped=f"needs ~{need / 2**30:.1f} GiB, MemAvailable {C.mem_available() / 2**30:.1f} GiB")
            continue
        rss = os.path.join(C.CACHE, f"{name}_rss_{m}")
        metrics = os.path.join(C.CACHE, f"{name}_{m}.jsonl")
        C.clean(rss)
        if os.path.exists(metrics):
            os.remove(metrics)
        rc, out = log.run(C.mpirun(ranks, bind=ranks > 1) + C.rss_wrap(C.rel(rss)) + [
            C.BIN, "train", "--model", "t5-base", "--tokenizer", C.T5_TOK, "--task", "sst2", "--method", m,
            *EXTRA.get(m, []), "--train.steps", str(steps), *shape_args,
            "--train.eval-every", "0", "--train.eval-max", "4", "--metrics", C.rel(metrics)], check=False, timeout=1800)
        if rc != 0:
            rows[m] = dict(failed=(out.strip().splitlines() or [f"rc {rc}"])[-1])
            continue
        st = C.steps_of(C.read_jsonl(metrics))
        tr = re.search(r"trainable params: ([\d,]+) \|\| all params: ([\d,]+)", out)
        rows[m] = dict(peak_rss=C.read_rss(rss, ranks), step_s=C.median([s["step_time_s"] for s in st[1:]] or
                                                                   [s["step_time_s"] for s in st]),
                       trainable=int(tr.group(1).replace(",", "")) if tr else pl["trainable_params"],
                       bytes_per_step=st[-1]["bytes_allreduced"])
    full = rows.get("full", {}).get("peak_rss")
    lst = rows.get("lst", {}).get("peak_rss")
    ratio = max(lst) / max(full) if full and lst else None
    C.write_json(f"{name}.json", dict(steps=steps, batch=batch, tokens=tokens, ranks=ranks, methods=rows,
                                      lst_peak_vs_full=ratio, note=C.machine_note()))
    table = []
    for m, r in rows.items():
        if "peak_rss" not in r:
            table.append([f"`{m}`", r.get("missing") or r.get("skipped") or r.get("failed"), "", "", "", ""])
            continue
        gb = [x / 2**30 for x in r["peak_rss"]]
        rel_full = f"{max(r['peak_rss']) / max(full):.2f}" if full else "–"
        table.append([f"`{m}`", f"{r['trainable']:,}", " / ".join(f"{g:.2f}" for g in gb), rel_full,
                      f"{r['bytes_per_step']:,}", f"{1000 * r['step_s']:.0f}"])
    with open(os.path.join(C.RESULTS, f"{name}.md"), "w") as f:
        f.write(f"### Peak RSS per rank, T5-base shape (random init), {ranks} rank(s), batch {batch}, {tokens} tokens, "
                f"{steps} steps\n\n")
        f.write(C.md_table(["method", "trainable", "peak RSS GiB (per rank)", "÷ full", "bytes/step", "ms/step"],
                           table))
        f.write("\nPeak RSS is each rank's VmHWM (bench/rss_wrap.py), libtorch and the tokenized SST-2 included. "
                "FISH with `--fish.select magnitude`.\n\n" + C.machine_note() + "\n")
    log.save()


if __name__ == "__main__":
    main()
