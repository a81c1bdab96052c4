#!/usr/bin/env python3
"""bench/lr_probe.py — a learning-rate probe: one config trained on one task at several rates, side by side.

  bench/lr_probe.py --name multitask_lr_probe --configs configs/minilm-hyperformer.ini,configs/minilm-hyperprompt.ini
                    [--task sst2] [--lrs 1e-4,3e-4,1e-3] [--steps 300] [--seed 42] [--eval-max 300]

Each (config, rate) is one command from the repository root:
  mpirun -np 2 --oversubscribe --bind-to core build/deltatune train --config C --task T --train.seed S
         --train.steps N --train.warmup-steps N/10 --train.max-len 64 --train.eval-every 0 --train.eval-max E
         --threads 1 --train.lr R --metrics F
and ends with an evaluation on the first E examples of the task's dev set. A run whose metrics file is in
bench/.cache with its evaluation is not repeated (--redo repeats it). It is how a config's rate was chosen
where its comment cites this file; the dev examples it reads are the ones the tables report on (as GLUE dev-set
model selection is), so a table that uses a probed rate says so. Results: bench/results/<name>.{md,json,commands.txt}.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402
from multitask import HEADLINE, headline  # noqa: E402  (the GLUE headline score the tables report)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", required=True, help="results file stem under bench/results/")
    ap.add_argument("--configs", required=True, help="comma-separated config files")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--lrs", default="1e-4,3e-4,1e-3")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--eval-max", type=int, default=300)
    ap.add_argument("--redo", action="store_true", help="rerun the runs whose metrics are in bench/.cache")
    a = ap.parse_args()
    metric = HEADLINE[a.task]
    log = C.Log(a.name)
    rows = []
    for config in a.configs.split(","):
        for lr in a.lrs.split(","):
            stem = f"{os.path.splitext(os.path.basename(config))[0]}_{a.task}_{lr}_{a.seed}"
            metrics = os.path.join(C.CACHE, f"{a.name}_{stem}.jsonl")
            cmd = C.mpirun(2) + [C.BIN, "train", "--config", config, "--task", a.task, "--train.seed", str(a.seed),
                                 "--train.steps", str(a.steps), "--train.warmup-steps", str(a.steps // 10),
                                 "--train.max-len", "64", "--train.eval-every", "0",
                                 "--train.eval-max", str(a.eval_max), "--threads", "1", "--train.lr", lr,
                                 "--metrics", C.rel(metrics)]
            done = os.path.exists(metrics) and any("eval_count" in r for r in C.read_jsonl(metrics))
            if done and not a.redo:  # a finished run's metrics are kept in bench/.cache: not repeated
                rc, out = 0, ""
                log.lines.append(f"# kept from an earlier run (its metrics file {C.rel(metrics)})\n"
                                 + C.shell_text(cmd))
            else:
                if os.path.exists(metrics):
                    os.remove(metrics)
                rc, out = log.run(cmd, check=False, timeout=3 * 3600)
            row = dict(config=config, task=a.task, lr=float(lr), lr_text=lr, seed=a.seed, steps=a.steps,
                       eval_max=a.eval_max, metric=metric)
            if rc != 0:
                row["failed"] = (out.strip().splitlines() or [f"rc {rc}"])[-1]
            else:
                rows_read = C.read_jsonl(metrics)
                last = [r for r in rows_read if "eval_count" in r][-1]
                scores = {k[5:]: v for k, v in last.items() if k.startswith("eval_")}
                row.update(score=headline(a.task, scores), eval_count=last["eval_count"],
                           final_loss=C.steps_of(rows_read)[-1]["loss"])
            rows.append(row)
            print(f"[bench:{a.name}] {config} lr {lr}: {row.get('score', row.get('failed'))}", flush=True)
    log.lines = [line.replace(C.BIN, C.rel(C.BIN)) for line in log.lines]
    log.save()
    C.write_json(f"{a.name}.json", dict(rows=rows, steps=a.steps, seed=a.seed, task=a.task, eval_max=a.eval_max))
    table = C.md_table(["config", "lr", f"{a.task} dev {metric} % (first {a.eval_max})", "final loss"],
                       [[f"`{r['config']}`", r["lr_text"],
                         f"{100 * r['score']:.1f}" if "score" in r else f"failed: {r['failed']}",
                         f"{r['final_loss']:.3f}" if "final_loss" in r else "–"] for r in rows])
    with open(os.path.join(C.RESULTS, f"{a.name}.md"), "w") as f:
        f.write(f"### Learning-rate probe: {a.task}, {a.steps} steps (warmup {a.steps // 10}), seed {a.seed}, "
                f"2 ranks, batch as each config, evaluated on the first {a.eval_max} dev examples\n\n")
        f.write(table)
        f.write(f"\nEach row: `bench/lr_probe.py` (commands in {a.name}.commands.txt); every other option from the "
                "config. One seed, a short budget: it ranks rates, it does not measure the methods.\n\n")
        f.write(C.machine_note() + "\n")


if __name__ == "__main__":
    main()
