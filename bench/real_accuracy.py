#!/usr/bin/env python3
"""bench/real_accuracy.py — GLUE dev scores of every method on the real all-MiniLM-L6-v2, 2 ranks, 3 seeds.

  bench/real_accuracy.py [--quick] [--tasks sst2,cola,rte] [--methods full,lora,...] [--seeds 42,43,44] [--redo]

Each run is one command (its config, configs/minilm-<method>.ini, plus the task, seed and the task's step budget):
  mpirun -np 2 --bind-to core build/deltatune train --config configs/minilm-<m>.ini --task T --train.seed S
         --train.steps N --train.max-len L --metrics F
and ends with an evaluation on the whole dev set (SST-2 872, CoLA 1,043 (MCC), RTE 277 examples). Runs are
recorded one per line in bench/results/real_accuracy.runs.jsonl (score, bytes/step, step time, the command, the
config's sha256), and a recorded run is not repeated unless its config changed since (--redo repeats it), so the
table can be filled over several sessions; the table (real_accuracy.md/json) is built from every recorded run of the
current configs, and lists what is not measured yet.

Budget (a few hours here, 2 cores): SST-2 250 steps, CoLA 600 (max-len 32: 5 of its 8,551 training sentences
are longer; at 200 steps every method predicted the majority class), RTE 150 (max-len 128: sentence pairs), batch
16 per rank (32 in all). --quick: SST-2, one seed, 60 steps, Fisher over 128 examples (minutes); its runs
are recorded apart (real_accuracy.quick.runs.jsonl), so they never mix with the full table's.
"""
import argparse
import hashlib
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

MODEL = "models/all-minilm-l6-v2"
METHODS = ["full", "fish", "fish-1pct", "dsee", "lst", "bitfit", "lora", "houlsby", "pfeiffer", "parallel_adapter",
           "prefix", "prompt", "ia3", "compacter", "mam"]
TASKS = {"sst2": dict(steps=250, max_len=64, metric="eval_accuracy"),
         "cola": dict(steps=600, max_len=32, metric="eval_mcc"),
         "rte": dict(steps=150, max_len=128, metric="eval_accuracy")}
QUICK_STEPS = 60  # --quick: SST-2 only, one seed


def steps_of(task, quick):
    return QUICK_STEPS if quick else TASKS[task]["steps"]


# The published reference: MiniLM 6 x 384 (22M; the 6-layer MiniLM all-MiniLM-L6-v2 starts from) on the GLUE dev
# sets, fine-tuned in full, from microsoft/xtremedistil-l6-h384-uncased's model card table (MiniLM row, 22M).
PUBLISHED = {"sst2": 0.913, "rte": 0.689}


def model_identity():
    rows = [l.split("\t") for l in open(os.path.join(C.ROOT, "scripts/models.tsv")) if not l.startswith("#")]
    files = {r[4]: r[5].strip() for r in rows if r[0] == "all-minilm-l6-v2"}
    package = next(r[1] for r in rows if r[0] == "all-minilm-l6-v2")
    return dict(name="all-MiniLM-L6-v2", path=MODEL, package=package, sha256=files["model.safetensors"],
                params=22713216)


def method_of(name):
    """The --method of configs/minilm-<name>.ini (fish-1pct is fish)."""
    for line in open(os.path.join(C.ROOT, f"configs/minilm-{name}.ini")):
        if line.startswith("method"):
            return line.split("=", 1)[1].strip()
    return name


def config_sha(name):
    """A run is repeated when its config file changed since it was recorded."""
    with open(os.path.join(C.ROOT, f"configs/minilm-{name}.ini"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def run_key(r):
    return (r["task"], r["method"], r["seed"], r["steps"], r.get("config_sha256"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tasks", default="")
    ap.add_argument("--methods", default="")
    ap.add_argument("--seeds", default="")
    ap.add_argument("--redo", action="store_true")
    a = ap.parse_args()
    tasks = a.tasks.split(",") if a.tasks else (["sst2"] if a.quick else list(TASKS))
    methods = a.methods.split(",") if a.methods else METHODS
    seeds = [int(s) for s in a.seeds.split(",")] if a.seeds else ([42] if a.quick else [42, 43, 44])
    for t in tasks:
        if t not in TASKS:
            sys.exit(f"real_accuracy.py: unknown task '{t}' ({', '.join(TASKS)})")
    for m in methods:
        if not os.path.exists(os.path.join(C.ROOT, f"configs/minilm-{m}.ini")):
            sys.exit(f"real_accuracy.py: no configs/minilm-{m}.ini")
    if not os.path.exists(os.path.join(C.ROOT, MODEL, "model.safetensors")):
        sys.exit(f"real_accuracy.py: {MODEL} missing (scripts/fetch-models.sh)")
    part = "real_accuracy.quick" if a.quick else "real_accuracy"
    runs_path = os.path.join(C.RESULTS, part + ".runs.jsonl")
    runs = C.read_jsonl(runs_path) if os.path.exists(runs_path) else []
    log = C.Log(part)

    for task in tasks:
        spec = TASKS[task]
        steps = steps_of(task, a.quick)
        for m in methods:
            for seed in seeds:
                key = (task, m, seed, steps, config_sha(m))
                if not a.redo and any(run_key(r) == key for r in runs):
                    continue
                metrics = os.path.join(C.CACHE, f"real_{task}_{m}_{seed}.jsonl")
                if os.path.exists(metrics):
                    os.remove(metrics)
                extra = ["--fish.samples", "128"] if a.quick and m.startswith("fish") else []
                cmd = C.mpirun(2) + [C.BIN, "train", "--config", f"configs/minilm-{m}.ini", "--task", task,
                                     "--train.seed", str(seed), "--train.steps", str(steps), "--train.max-len",
                                     str(spec["max_len"]), "--threads", "1", "--metrics", C.rel(metrics), *extra]
                rc, out = log.run(cmd, check=False, timeout=3600)
                record = dict(task=task, method=m, seed=seed, steps=steps, config_sha256=key[4],
                              command=C.recorded_command(cmd))
                if rc != 0:
                    record["failed"] = (out.strip().splitlines() or [f"rc {rc}"])[-1]
                else:
                    rows = C.read_jsonl(metrics)
                    last_eval = [r for r in rows if "eval_accuracy" in r][-1]
                    steps_rows = C.steps_of(rows)
                    record.update(score=last_eval[spec["metric"]], metric=spec["metric"],
                                  eval_accuracy=last_eval["eval_accuracy"], eval_count=last_eval.get("eval_count"),
                                  bytes_per_step=steps_rows[-1]["bytes_allreduced"],
                                  step_time_s=C.median([r["step_time_s"] for r in steps_rows[3:]]))
                runs = [r for r in runs if run_key(r)[:4] != key[:4]] + [record]
                with open(runs_path, "w") as f:
                    for r in runs:
                        f.write(json.dumps(r, sort_keys=True) + "\n")
    save_commands(part, runs)
    write_table(part, runs, a.quick)


def save_commands(part, runs):
    C.save_run_commands(part, f"bench/{part}", runs,
                        lambda r: f"{r['task']} {r['method']} seed {r['seed']}, {r['steps']} steps",
                        lambda r: f"{r.get('metric', 'score')} {r.get('score')}")


def write_table(part, runs, quick):
    table = {}
    for t in TASKS:
        for m in METHODS:
            # runs of an older config or another step budget (kept in the runs file as history) are not counted
            current = [r for r in runs if r["task"] == t and r["method"] == m and
                       r.get("config_sha256") == config_sha(m) and r["steps"] == steps_of(t, quick)]
            ok = [r for r in current if "score" in r]
            failed = [r["failed"] for r in current if "failed" in r]
            if ok:
                scores = [r["score"] for r in sorted(ok, key=lambda r: r["seed"])]
                table.setdefault(t, {})[m] = dict(
                    mean=statistics.mean(scores), std=statistics.stdev(scores) if len(scores) > 1 else 0.0,
                    seeds=len(scores), scores=scores, steps=ok[0]["steps"], bytes_per_step=ok[0]["bytes_per_step"],
                    step_time_s=C.median([r["step_time_s"] for r in ok]))
            elif failed:
                table.setdefault(t, {})[m] = dict(failed=failed[-1])
    plans = {}
    for m in METHODS:
        pl, _ = C.plan(MODEL, method_of(m), ["--task", "sst2"] + C.method_options(f"configs/minilm-{m}.ini"))
        if pl:
            plans[m] = dict(trainable_params=pl["trainable_params"], total_params=pl["total_params"])
    out = dict(model=model_identity(), tasks=TASKS, steps={t: steps_of(t, quick) for t in TASKS}, published_full=PUBLISHED, methods=METHODS, table=table,
               plans=plans, quick=quick, note=C.machine_note())
    C.write_json(part + ".json", out)

    header = ["method", "trainable", "bytes/step/rank"]
    for t in TASKS:
        header.append(f"{t.upper()} {'MCC' if TASKS[t]['metric'] == 'eval_mcc' else 'acc'} % (seeds)")
    rows = []
    full = {t: table.get(t, {}).get("full", {}).get("mean") for t in TASKS}
    for m in METHODS:
        cells = [f"`{m}`", f"{plans[m]['trainable_params']:,}" if m in plans else "–"]
        bps = next((table[t][m]["bytes_per_step"] for t in TASKS if m in table.get(t, {})
                    and "bytes_per_step" in table[t][m]), None)
        cells.append(f"{bps:,}" if bps else "–")
        for t in TASKS:
            r = table.get(t, {}).get(m)
            if r is None:
                cells.append("not run yet")
            elif "failed" in r:
                cells.append("failed: " + r["failed"][:60])
            else:
                gap = f", {100 * (r['mean'] - full[t]):+.1f} vs full" if full[t] is not None and m != "full" else ""
                cells.append(f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f} ({r['seeds']}){gap}")
        rows.append(cells)
    budget = ", ".join(f"{t.upper()} {steps_of(t, quick)} steps (max-len {s['max_len']})"
                       for t, s in TASKS.items())
    with open(os.path.join(C.RESULTS, part + ".md"), "w") as f:
        f.write(f"### GLUE dev scores on all-MiniLM-L6-v2 (real weights, {model_identity()['package']}), 2 ranks, "
                f"batch 32, mean ± std over seeds{f' — QUICK ({QUICK_STEPS} steps, one seed)' if quick else ''}\n\n")
        f.write(C.md_table(header, rows))
        f.write(f"\nBudget: {budget}; every method with its `configs/minilm-<method>.ini` (learning rate and options, "
                "with where they come from). bytes/step/rank: the gradient payload all-reduced per step (exact, "
                "from `train --metrics`). Published full fine-tuning of MiniLM 6x384 (22M): SST-2 91.3, RTE 68.9 "
                "(GLUE dev; microsoft/xtremedistil-l6-h384-uncased model card, MiniLM row) — after epochs of "
                "training, and from the plain MiniLM checkpoint, not the sentence-embedding all-MiniLM-L6-v2.\n\n"
                + C.machine_note() + "\n")


if __name__ == "__main__":
    main()
