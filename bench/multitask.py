#!/usr/bin/env python3
"""bench/multitask.py — multi-task vs single-task PEFT on GLUE (issue 16 §4): average dev score, trainable parameters
per task and bytes per step, on stories260K and the real all-MiniLM-L6-v2, 2 ranks, 3 seeds.

  bench/multitask.py [--quick] [--backbones stories260K,minilm] [--methods houlsby,lora,...] [--seeds 42,43,44]
                     [--tasks sst2,cola,stsb] [--redo]

Rows (methods), each trained and evaluated on every task of TASKS (default SST-2, CoLA, STS-B):
  single  houlsby, lora: one run per task (`--task T`), the single-task adapters; their per-task scores are averaged
          into the same GLUE average; trainable per task = the run's own count (its adapter and head), total = the
          sum over the tasks (one delta per task is stored).
  multi   lora, houlsby (one delta shared by every task: the multi-task baseline), shared_adapter (share all),
          shared_adapter-down (--shared_adapter.share down), hyperformer, hyperprompt, attempt: ONE run on
          `--task sst2,cola,stsb`; trainable total = that run's count (every task's head included), per task =
          total / number of tasks (the delta serves them all; shared_adapter-down's own up projections are in it).
A method that `build/deltatune train --help` does not list (nor `plan` knows) is skipped, with a note in the table,
and runs on a later invocation once the binary has it. ATTEMPT mixes frozen source prompts: two `prompt` runs on
GLUE tasks outside the table's (RTE, MRPC; configs/[minilm-]prompt.ini at attempt's prompt length, STEPS steps,
seed 42, `--out` checkpoints in bench/.cache) are trained first, once per backbone and shared by every seed, and
passed as --attempt.sources; they are outside the step budget, as the paper's pre-trained sources are (without
sources ATTEMPT's mixture is the target prompt alone, i.e. prompt tuning with an unused attention module).

Each run is one command (from the repository root; configs/<m>.ini for stories260K, configs/minilm-<m>.ini for
MiniLM, with the method's learning rate and options and where they come from):
  mpirun -np 2 --bind-to core build/deltatune train --config C --task T[,T2,T3] --train.seed S --train.steps N
         --train.warmup-steps N/10 --train.max-len 64 --train.eval-every 0 --threads 1 --metrics F
         [--multitask.mix proportional --multitask.cap 2000]
and ends with an evaluation on every task's whole dev set (SST-2 872, CoLA 1,043 (MCC), STS-B 1,500 (Pearson and
Spearman)). Same budget: a multi-task run takes as many steps as the single-task runs of its row together (STEPS per
task x number of tasks), and its mix is uniform — proportional with a cap (T5's K) of 2,000 examples, below every
task's training-set size, so each task gets a third of the batches, i.e. in expectation the steps of its single-task
run. Warmup is 10% of the steps in every run; the batch is the config's (16 per rank, 32 in all).

Tasks: SST-2 (sentiment, accuracy), CoLA (acceptability, MCC) and STS-B (similarity, a regression head, Pearson and
Spearman): one single-sentence task of each metric kind plus a sentence-pair regression, all short enough for one
max-len of 64 tokens (a run has one max-len; <1% of SST-2 and ~3% of STS-B pairs are truncated; batches are padded
to their longest row, so CoLA costs what its own sentences cost). RTE (max-len 128, ~3 s a step on MiniLM here, 277
dev examples, near chance at this budget) would cost as much as the three together; MRPC has 408 dev examples.
Budget: 300 steps per task, so one seed is 2 single rows x 3 tasks + 7 multi rows = 27 x 300 = 8,100 steps (+ 600
for ATTEMPT's sources, once). Measured here on the shared 2 cores (niced, next to builds and tests, load 3-6): a
stories260K step ~0.2 s (a seed ~35 min with start-ups and evaluations), a MiniLM step 0.85-1.1 s for every
multi-task method (0.4 s when the machine is quiet, bench/results/real_accuracy.runs.jsonl), a seed 1-2.5 h.

Runs are recorded one per line in bench/results/multitask.runs.jsonl (scores, bytes/step, step time, the command, the
sha256 of the config and of the command-line options); a recorded run is not repeated unless its config or options
changed (--redo repeats it), so the table fills over several sessions; the table (multitask.md/json) is rebuilt from
every recorded run of the current configs. --quick: stories260K only, one seed, 40 steps per task (a smoke run of a
few minutes), recorded apart (multitask.quick.*) so it never mixes with the full table.

Goal (issue 16 §4): the multi-task hypernetwork methods (hyperformer, hyperprompt, attempt) match or beat the
single-task adapters (houlsby single) on the average with fewer parameters per task. "Match" is read as: the mean
over seeds at least the single-task mean minus the larger of the two seed standard deviations (with one seed: at
least the single-task score); the md says per method whether it held, and which methods are at or above the
single-task mean itself (the strict reading: where a baseline's seeds disagree, its std makes the first lenient).
"""
import argparse
import hashlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

BACKBONES = {
    "stories260K": dict(model=C.STORIES, config="configs/{}.ini", title="stories260K (llama2.c, 260K parameters)"),
    "minilm": dict(model="models/all-minilm-l6-v2", config="configs/minilm-{}.ini",
                   title="all-MiniLM-L6-v2 (real weights, 22.7M parameters)"),
}
TASKS = ["sst2", "cola", "stsb"]
KNOWN_TASKS = ["sst2", "cola", "rte", "mrpc", "stsb", "wnli"]
# The GLUE headline score of each task (as `train`'s eval_average): what the average is over.
HEADLINE = {"sst2": "acc", "rte": "acc", "wnli": "acc", "cola": "MCC", "mrpc": "(F1+acc)/2",
            "stsb": "(Pearson+Spearman)/2"}
STEPS = 300        # per task (a multi-task run: STEPS x number of tasks)
QUICK_STEPS = 40   # --quick: stories260K, one seed
MAX_LEN = 64
MIX = ["--multitask.mix", "proportional", "--multitask.cap", "2000"]  # uniform over tasks of >= 2,000 examples
# (row, mode, config name, extra options). The rows' order is the table's.
ROWS = [
    ("houlsby", "single", "houlsby", []),
    ("lora", "single", "lora", []),
    ("lora", "multi", "lora", []),
    ("houlsby", "multi", "houlsby", []),
    ("shared_adapter", "multi", "shared_adapter", ["--shared_adapter.share", "all"]),
    ("shared_adapter-down", "multi", "shared_adapter", ["--shared_adapter.share", "down"]),
    ("hyperformer", "multi", "hyperformer", []),
    ("hyperprompt", "multi", "hyperprompt", []),
    ("attempt", "multi", "attempt", []),
]
HYPER = ["hyperformer", "hyperprompt", "attempt"]
BASELINE = ("houlsby", "single")


def headline(task, m):
    """The task's GLUE headline score from its metrics {accuracy, mcc, f1, pearson, spearman} (None: undefined, e.g.
    a correlation of constant predictions, counted 0 as no skill)."""
    def v(k):
        x = m.get(k)
        return 0.0 if x is None or (isinstance(x, float) and math.isnan(x)) else x
    if task == "cola":
        return v("mcc")
    if task == "mrpc":
        return (v("f1") + v("accuracy")) / 2
    if task == "stsb":
        return (v("pearson") + v("spearman")) / 2
    return v("accuracy")


def config_path(backbone, name):
    return BACKBONES[backbone]["config"].format(name)


def method_of(config):
    for line in open(os.path.join(C.ROOT, config)):
        if line.startswith("method"):
            return line.split("=", 1)[1].strip()
    raise SystemExit(f"multitask.py: {config} names no method")


def options_sha(config, options):
    """A run is repeated when its config file or its command-line options changed since it was recorded."""
    h = hashlib.sha256()
    with open(os.path.join(C.ROOT, config), "rb") as f:
        h.update(f.read())
    h.update(json.dumps(options).encode())
    return h.hexdigest()


def run_key(r):
    return (r["backbone"], r["row"], r["mode"], r["tasks"], r["seed"], r["steps"], r.get("options_sha256"))


_help = None


def listed_methods():
    """The text of `train --help`: a method not in it is not in this binary yet."""
    global _help
    if _help is None:
        p = subprocess.run([C.BIN, "train", "--help"], cwd=C.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
        _help = p.stdout
    return _help


def method_listed(method):
    """`train --help` names the method (in --method's list, or by its --<method>.* options); for a method with no
    options that the list's text does not name yet, `plan` knowing it counts too."""
    text = listed_methods()
    if f"--{method}." in text or any(w.strip(" ,:'") == method for w in text.split()):
        return True
    return C.method_known(method)[0]


class Run:
    """One command of the table: a row's single-task run on one task, or its multi-task run on all."""

    def __init__(self, backbone, row, mode, cfg_name, extra, tasks, seed, steps_per_task):
        self.backbone, self.row, self.mode, self.seed = backbone, row, mode, seed
        self.config = config_path(backbone, cfg_name)
        self.method = method_of(self.config)
        self.tasks = ",".join(tasks)
        self.steps = steps_per_task * len(tasks)
        rest = ["--train.steps", str(self.steps), "--train.warmup-steps", str(self.steps // 10), "--train.max-len",
                str(MAX_LEN), "--train.eval-every", "0", "--train.eval-max", "0", "--threads", "1", *extra]
        if len(tasks) > 1:
            rest += MIX
        self.options = ["--task", self.tasks, "--train.seed", str(seed), *rest]
        # the seed is a key of its own: the sha names the config and every other option, so the table can
        # gather a row's seeds by it
        self.sha = options_sha(self.config, ["--task", self.tasks, *rest])

    def key(self):
        return (self.backbone, self.row, self.mode, self.tasks, self.seed, self.steps, self.sha)


def plan_of(backbone, cfg_name, extra, tasks):
    config = config_path(backbone, cfg_name)
    # plan takes the method options only; extra holds method options only (--shared_adapter.share)
    pl, err = C.plan(BACKBONES[backbone]["model"], method_of(config),
                     ["--task", ",".join(tasks)] + C.method_options(config) + extra)
    return pl


# ATTEMPT mixes frozen source prompts, learned by prompt tuning on tasks other than the targets (the paper's six
# high-resource ones); here the bundled GLUE tasks outside the run's tasks (WNLI, 635 examples, left out): a
# `prompt` run of STEPS steps on each (configs/[minilm-]prompt.ini, seed 42, shared by every seed of the table, as
# the paper's released sources are), its checkpoint's "prompt.embedding" read by --attempt.sources. They are
# trained once per backbone, outside the step budget of the comparison (the paper does not count them either).
SOURCE_CANDIDATES = ["rte", "mrpc", "sst2", "cola", "stsb"]
SOURCE_SEED = 42
NUM_SOURCES = 2


def attempt_length(backbone):
    import configparser
    cp = configparser.ConfigParser()
    with open(os.path.join(C.ROOT, config_path(backbone, "attempt"))) as f:
        cp.read_string("[top]\n" + f.read())
    return cp.getint("attempt", "length", fallback=100)


class SourceRun:
    """A prompt-tuning run whose trained prompt is one of ATTEMPT's sources."""

    def __init__(self, backbone, task, steps, part):
        self.backbone, self.task, self.steps, self.seed = backbone, task, steps, SOURCE_SEED
        self.config = config_path(backbone, "prompt")
        rest = ["--prompt.length", str(attempt_length(backbone)), "--train.steps", str(steps),
                "--train.warmup-steps", str(steps // 10), "--train.max-len", str(MAX_LEN), "--train.eval-every", "0",
                "--train.eval-max", "0", "--threads", "1"]
        self.options = ["--task", task, "--train.seed", str(self.seed), *rest]
        self.sha = options_sha(self.config, self.options)
        self.out = os.path.join(C.CACHE, f"{part}_source_{backbone}_{task}_{steps}_{self.sha[:10]}")
        self.checkpoint = os.path.join(self.out, f"ckpt-{steps:08d}.h5")

    def key(self):
        return (self.backbone, "source:prompt", "source", self.task, self.seed, self.steps, self.sha)


def source_runs(backbone, tasks, steps, part):
    return [SourceRun(backbone, t, steps, part) for t in [t for t in SOURCE_CANDIDATES if t not in tasks][:NUM_SOURCES]]


def runs_of_row(backbone, row, mode, cfg_name, extra, tasks, seeds, steps, part):
    if method_of(config_path(backbone, cfg_name)) == "attempt":
        extra = extra + ["--attempt.sources", ",".join(C.rel(s.checkpoint) for s in
                                                       source_runs(backbone, tasks, steps, part))]
    if mode == "single":
        return [Run(backbone, row, mode, cfg_name, extra, [t], s, steps) for s in seeds for t in tasks]
    return [Run(backbone, row, mode, cfg_name, extra, tasks, s, steps) for s in seeds]


def execute_source(src, log):
    """Trains one source prompt (again when its checkpoint is gone from the cache)."""
    if os.path.isdir(src.out):
        shutil.rmtree(src.out)
    cmd = C.mpirun(2) + [C.BIN, "train", "--config", src.config, *src.options, "--out", C.rel(src.out)]
    rc, out = log.run(cmd, check=False, timeout=3 * 3600)
    record = dict(backbone=src.backbone, row="source:prompt", mode="source", method="prompt", tasks=src.task,
                  seed=src.seed, steps=src.steps, options_sha256=src.sha, config=src.config,
                  checkpoint=C.rel(src.checkpoint), command=C.recorded_command(cmd))
    if rc != 0 or not os.path.exists(src.checkpoint):
        record["failed"] = (out.strip().splitlines() or [f"rc {rc}"])[-1] if rc != 0 else \
            f"no {C.rel(src.checkpoint)} after the run"
    else:
        last = [l for l in out.splitlines() if "eval step" in l]
        record["eval"] = last[-1].split("eval step", 1)[1].strip() if last else None
    return record


def execute(run, log, part):
    metrics = os.path.join(C.CACHE, f"{part}_{run.backbone}_{run.mode}_{run.row}_{run.tasks.replace(',', '+')}"
                                    f"_{run.seed}.jsonl")
    if os.path.exists(metrics):
        os.remove(metrics)
    cmd = C.mpirun(2) + [C.BIN, "train", "--config", run.config, *run.options, "--metrics", C.rel(metrics)]
    rc, out = log.run(cmd, check=False, timeout=3 * 3600)
    record = dict(backbone=run.backbone, row=run.row, mode=run.mode, method=run.method, tasks=run.tasks,
                  seed=run.seed, steps=run.steps, options_sha256=run.sha, config=run.config,
                  command=C.recorded_command(cmd))
    if rc != 0:
        record["failed"] = (out.strip().splitlines() or [f"rc {rc}"])[-1]
        return record
    rows = C.read_jsonl(metrics)
    tasks = run.tasks.split(",")
    scores = {}
    if len(tasks) == 1:
        last = [r for r in rows if "eval_count" in r][-1]
        scores[tasks[0]] = {k[5:]: v for k, v in last.items() if k.startswith("eval_")}
    else:
        last = [r for r in rows if "eval_average" in r][-1]
        for t in tasks:
            scores[t] = {k.split("/")[2]: v for k, v in last.items() if k.startswith(f"eval/{t}/")}
        record["eval_average"] = last["eval_average"]
    steps_rows = C.steps_of(rows)
    b = [r["bytes_allreduced"] for r in steps_rows]
    record.update(scores=scores, headline={t: headline(t, scores[t]) for t in tasks},
                  bytes_per_step=int(C.median(b)), bytes_min=min(b), bytes_max=max(b),
                  step_time_s=C.median([r["step_time_s"] for r in steps_rows[3:]]),
                  steps_done=len(steps_rows))
    return record


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--backbones", default="")
    ap.add_argument("--methods", default="", help="rows by name (houlsby, lora, shared_adapter, "
                    "shared_adapter-down, hyperformer, hyperprompt, attempt); both modes of houlsby and lora")
    ap.add_argument("--seeds", default="")
    ap.add_argument("--tasks", default="")
    ap.add_argument("--redo", action="store_true")
    a = ap.parse_args()
    backbones = a.backbones.split(",") if a.backbones else (["stories260K"] if a.quick else list(BACKBONES))
    rows = [r for r in ROWS if not a.methods or r[0] in a.methods.split(",")]
    seeds = [int(s) for s in a.seeds.split(",")] if a.seeds else ([42] if a.quick else [42, 43, 44])
    tasks = a.tasks.split(",") if a.tasks else TASKS
    steps = QUICK_STEPS if a.quick else STEPS
    for b in backbones:
        if b not in BACKBONES:
            sys.exit(f"multitask.py: unknown backbone '{b}' ({', '.join(BACKBONES)})")
        if not os.path.exists(os.path.join(C.ROOT, BACKBONES[b]["model"])):
            sys.exit(f"multitask.py: {BACKBONES[b]['model']} missing (scripts/fetch-models.sh)")
    for t in tasks:
        if t not in KNOWN_TASKS:
            sys.exit(f"multitask.py: unknown task '{t}' ({', '.join(KNOWN_TASKS)})")
    if len(tasks) < 2:
        sys.exit("multitask.py: --tasks needs two tasks or more")
    if a.methods:
        unknown = set(a.methods.split(",")) - {r[0] for r in ROWS}
        if unknown:
            sys.exit(f"multitask.py: unknown method row(s) {', '.join(sorted(unknown))} "
                     f"({', '.join(dict.fromkeys(r[0] for r in ROWS))})")
    if not os.access(C.BIN, os.X_OK):
        sys.exit(f"multitask.py: {C.rel(C.BIN)} missing (build it first)")
    part = "multitask.quick" if a.quick else "multitask"
    runs_path = os.path.join(C.RESULTS, part + ".runs.jsonl")
    runs = C.read_jsonl(runs_path) if os.path.exists(runs_path) else []
    log = C.Log(part)

    for b in backbones:
        for row, mode, cfg_name, extra in rows:
            if not os.path.exists(os.path.join(C.ROOT, config_path(b, cfg_name))):
                print(f"[bench:{part}] {b} {row}: no {config_path(b, cfg_name)}, skipped", flush=True)
                continue
            if not method_listed(method_of(config_path(b, cfg_name))):
                print(f"[bench:{part}] {b} {row}: `{C.rel(C.BIN)} train --help` does not list "
                      f"{method_of(config_path(b, cfg_name))}, skipped", flush=True)
                continue
            if method_of(config_path(b, cfg_name)) == "attempt":
                ok = True
                for src in source_runs(b, tasks, steps, part):
                    done = any(run_key(r) == src.key() and "failed" not in r for r in runs)
                    if done and os.path.exists(src.checkpoint):
                        continue
                    if not a.redo and any(run_key(r) == src.key() for r in runs) and not done:
                        ok = False  # a recorded failure: not repeated without --redo
                        continue
                    record = execute_source(src, log)
                    ok = ok and "failed" not in record
                    runs = [r for r in runs if run_key(r)[:6] != src.key()[:6]] + [record]
                    write_runs(runs_path, runs)
                if not ok:
                    print(f"[bench:{part}] {b} {row}: a source prompt failed, skipped", flush=True)
                    continue
            for run in runs_of_row(b, row, mode, cfg_name, extra, tasks, seeds, steps, part):
                if not a.redo and any(run_key(r) == run.key() for r in runs):
                    continue
                record = execute(run, log, part)
                runs = [r for r in runs if run_key(r)[:6] != run.key()[:6]] + [record]
                write_runs(runs_path, runs)
    save_commands(part, runs)
    write_table(part, runs, backbones, tasks, steps, a.quick)


write_runs = C.write_jsonl


def save_commands(part, runs):
    def outcome(r):
        if r["mode"] == "source":
            return f"ATTEMPT source prompt {r['checkpoint']} (dev: {r.get('eval')})"
        text = ", ".join(f"{t} {v:.4f}" for t, v in r["headline"].items())
        return text + (f", average {r['eval_average']:.4f}" if r.get("eval_average") is not None else "")
    C.save_run_commands(part, f"bench/multitask.py{' --quick' if 'quick' in part else ''}", runs,
                        lambda r: f"{r['backbone']} {r['row']} ({r['mode']}) {r['tasks']} seed {r['seed']}, "
                                  f"{r['steps']} steps", outcome)


def mean_std(xs):
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def pct(mean, std, n):
    return f"{100 * mean:.1f} ± {100 * std:.1f} ({n})"


def summarize_row(runs, b, row, mode, cfg_name, extra, tasks, steps, part):
    """The row's cells from its recorded runs (every seed) of the current config and options; runs of an older
    config, other options or another step budget stay in the runs file as history and are not counted."""
    wanted = {r.key()[:4] + r.key()[5:] for r in runs_of_row(b, row, mode, cfg_name, extra, tasks, [0], steps, part)}
    got = [r for r in runs if run_key(r)[:4] + run_key(r)[5:] in wanted]
    seeds = sorted({r["seed"] for r in got})
    failed = [r for r in got if "failed" in r]
    ok = [r for r in got if "failed" not in r]
    out = dict(row=row, mode=mode, config=config_path(b, cfg_name), method=method_of(config_path(b, cfg_name)),
               options=extra, runs=len(ok))
    if failed:
        out["failed"] = f"{failed[-1]['tasks']} seed {failed[-1]['seed']}: {failed[-1]['failed']}"
    # per task: headline over seeds
    per_task = {}
    for t in tasks:
        xs = [(r["seed"], r["headline"][t]) for r in ok if t in r["headline"]]
        if xs:
            m, s = mean_std([x for _, x in sorted(xs)])
            per_task[t] = dict(mean=m, std=s, seeds=len(xs), scores=[x for _, x in sorted(xs)])
    out["tasks"] = per_task
    # the average per seed, over every task (a seed counts once all its tasks are measured)
    averages = {}
    for s in seeds:
        hs = {t: r["headline"][t] for r in ok if r["seed"] == s for t in r["headline"]}
        if all(t in hs for t in tasks):
            averages[s] = statistics.mean(hs[t] for t in tasks)
    if averages:
        m, sd = mean_std([averages[s] for s in sorted(averages)])
        out["average"] = dict(mean=m, std=sd, seeds=len(averages), per_seed=averages)
    if ok:
        bps = sorted({r["bytes_per_step"] for r in ok})
        out["bytes_per_step"] = bps
        out["bytes_vary_within_run"] = any(r["bytes_min"] != r["bytes_max"] for r in ok)
        out["step_time_s"] = C.median([r["step_time_s"] for r in ok])
    # trainable counts from `plan` (the binary's accounting, heads included)
    if mode == "single":
        counts = {t: (plan_of(b, cfg_name, extra, [t]) or {}).get("trainable_params") for t in tasks}
        if all(v is not None for v in counts.values()):
            out["trainable_per_task"] = counts
            out["trainable_total"] = sum(counts.values())
    else:
        pl = plan_of(b, cfg_name, extra, tasks)
        if pl:
            out["trainable_total"] = pl["trainable_params"]
            out["trainable_per_task"] = {t: pl["trainable_params"] / len(tasks) for t in tasks}
    return out


def goal(table):
    """Per hypernetwork method: does it match or beat houlsby single on the average with fewer parameters per task?"""
    base = next((r for r in table if (r["row"], r["mode"]) == BASELINE), None)
    verdicts = {}
    for r in table:
        if r["row"] not in HYPER:
            continue
        if "average" not in r or base is None or "average" not in base:
            verdicts[r["row"]] = dict(held=None, why="not measured" if "skipped" not in r else r["skipped"])
            continue
        tol = max(r["average"]["std"], base["average"]["std"])
        score_ok = r["average"]["mean"] >= base["average"]["mean"] - tol
        per_r = r["trainable_total"] / len(r["trainable_per_task"]) if "trainable_total" in r else None
        per_b = base["trainable_total"] / len(base["trainable_per_task"]) if "trainable_total" in base else None
        params_ok = per_r is not None and per_b is not None and per_r < per_b
        verdicts[r["row"]] = dict(held=score_ok and params_ok, score_ok=score_ok, params_ok=params_ok,
                                  # the strict reading: at or above the baseline's mean (no seed spread)
                                  beats_mean=r["average"]["mean"] >= base["average"]["mean"] and params_ok,
                                  average=r["average"]["mean"], baseline_average=base["average"]["mean"],
                                  tolerance=tol, per_task=per_r, baseline_per_task=per_b)
    return verdicts


def eval_text(line):
    """ "300: dev accuracy 0.5487 on 277 examples (0.9 s)" -> "accuracy 0.5487" (train's last eval log line)."""
    m = re.search(r"dev (.*?) on \d+ examples", line or "")
    return m.group(1) if m else line


def fmt_count(x):
    return f"{round(x):,}" if x is not None else "–"


def write_table(part, runs, backbones, tasks, steps, quick):
    """Every row of every backbone in this part (the quick part: the backbones run or recorded), from the runs file,
    whatever this invocation ran."""
    backbones = [b for b in BACKBONES if not quick or b in backbones or any(r["backbone"] == b for r in runs)]
    out = dict(tasks=tasks, headline={t: HEADLINE[t] for t in tasks}, steps_per_task=steps,
               max_len=MAX_LEN, mix=MIX, quick=quick, backbones={}, note=C.machine_note())
    md = []
    for b in backbones:
        table = []
        for row, mode, cfg_name, extra in ROWS:
            config = config_path(b, cfg_name)
            if not os.path.exists(os.path.join(C.ROOT, config)):
                table.append(dict(row=row, mode=mode, skipped=f"no {config}"))
                continue
            r = summarize_row(runs, b, row, mode, cfg_name, extra, tasks, steps, part)
            if not method_listed(r["method"]) and not r["runs"]:
                r["skipped"] = f"not in this binary (`{C.rel(C.BIN)} train --help` does not list {r['method']})"
            table.append(r)
        verdicts = goal(table)
        out["backbones"][b] = dict(model=BACKBONES[b]["model"], rows=table, goal=verdicts)

        header = ["method", "mode", "trainable total", "per task", "bytes/step/rank"] + \
                 [f"{t.upper()} {HEADLINE[t]} % (seeds)" for t in tasks] + ["average % ± std (seeds)"]
        lines = []
        for r in table:
            cells = [f"`{r['row']}`", r["mode"]]
            if "skipped" in r:
                lines.append(cells + ["skipped: " + r["skipped"]] + [""] * (len(header) - 3))
                continue
            cells.append(fmt_count(r.get("trainable_total")))
            per = r.get("trainable_per_task")
            if per is None:
                cells.append("–")
            elif r["mode"] == "multi":
                cells.append(f"{fmt_count(r['trainable_total'] / len(tasks))} (total / {len(tasks)})")
            else:
                lo, hi = min(per.values()), max(per.values())
                cells.append(fmt_count(lo) if lo == hi else f"{lo:,}–{hi:,}")
            bps = r.get("bytes_per_step")
            cells.append("–" if not bps else (f"{bps[0]:,}" if len(bps) == 1 else f"{bps[0]:,}–{bps[-1]:,}")
                         + (" (varies)" if r.get("bytes_vary_within_run") else ""))
            for t in tasks:
                x = r["tasks"].get(t)
                cells.append(pct(x["mean"], x["std"], x["seeds"]) if x else "not run yet")
            av = r.get("average")
            cells.append(f"**{pct(av['mean'], av['std'], av['seeds'])}**" if av else "not run yet")
            if "failed" in r:
                cells[-1] += f" — failed: {r['failed'][:80]}"
            lines.append(cells)
        title = BACKBONES[b]["title"]
        md.append(f"### Multi-task vs single-task, {title}: GLUE dev, {', '.join(t.upper() for t in tasks)}, 2 ranks, "
                  f"batch 32, {steps} steps per task, mean ± std over seeds"
                  f"{' — QUICK (a smoke run, one seed)' if quick else ''}\n\n")
        md.append(C.md_table(header, lines))
        held = [m for m, v in verdicts.items() if v["held"]]
        failed = [m for m, v in verdicts.items() if v["held"] is False]
        unknown = [m for m, v in verdicts.items() if v["held"] is None]
        parts = []
        for m, v in verdicts.items():
            if v["held"] is None:
                continue
            parts.append(f"`{m}` {100 * v['average']:.1f} vs {100 * v['baseline_average']:.1f} "
                         f"(tolerance {100 * v['tolerance']:.1f}), {fmt_count(v['per_task'])} vs "
                         f"{fmt_count(v['baseline_per_task'])} trainable per task")
        line = (f"\n**Goal** (multi-task hypernetwork methods match or beat single-task `houlsby` on the average with "
                f"fewer parameters per task): held for {', '.join(f'`{m}`' for m in held) or 'none'}; not held for "
                f"{', '.join(f'`{m}`' for m in failed) or 'none'}"
                f"{'; not measured: ' + ', '.join(f'`{m}`' for m in unknown) if unknown else ''}. "
                + ("; ".join(parts) + "." if parts else "")
                + (f" At or above the baseline's mean (the strict reading, no seed spread): "
                   f"{', '.join(f'`{m}`' for m, v in verdicts.items() if v.get('beats_mean')) or 'none'}."
                   if parts else "") + "\n\n")
        md.append(line)
        srcs = source_runs(b, tasks, steps, part)
        got = {run_key(r): r for r in runs if r["mode"] == "source"}
        text = []
        for src in srcs:
            r = got.get(src.key())
            text.append(f"{src.task.upper()} (" + ("not trained yet" if r is None else f"failed: {r['failed']}"
                                                   if "failed" in r else f"dev {eval_text(r.get('eval'))}") + ")")
        out["backbones"][b]["attempt_sources"] = [dict(task=src.task, steps=src.steps, seed=src.seed,
                                                       checkpoint=C.rel(src.checkpoint),
                                                       record=got.get(src.key())) for src in srcs]
        md.append(f"`attempt`'s frozen source prompts: prompt tuning (`{config_path(b, 'prompt')}`, length "
                  f"{attempt_length(b)}, {steps} steps, seed {SOURCE_SEED}, shared by every seed) on "
                  f"{', '.join(text)}; trained once, not counted in the trainable parameters or the step budget, as "
                  f"the paper's pre-trained sources are not.\n\n")
    if quick:
        md.append("QUICK: a smoke run of the harness (a few dozen steps, one seed): the scores are near chance and the "
                  "goal line above says nothing about the methods.\n\n")
    tasks_text = ", ".join(f"{t.upper()} ({HEADLINE[t]})" for t in tasks)
    md.append(
        f"Every run ends with an evaluation on each task's whole dev set; the average is the GLUE-style mean of the "
        f"tasks' headline scores ({tasks_text}), per seed, then mean ± std over seeds. single: one run per task "
        f"({steps} steps each), trainable per task its own count (its delta and head), total their sum. multi: one "
        f"run on `--task {','.join(tasks)}` with {steps} x {len(tasks)} = {steps * len(tasks)} steps (the same total "
        f"budget as the single-task runs of a row together), uniform task mix (`{' '.join(MIX)}`: every task has more "
        f"than 2,000 training examples, so each gets 1/{len(tasks)} of the batches, in expectation its single-task "
        f"steps); trainable per task = the run's total (every task's head included) / {len(tasks)}. `lora` and "
        f"`houlsby` multi: one delta shared by all tasks (the multi-task baseline); `shared_adapter` (share all) is "
        f"by construction houlsby's adapters shared by every task, the same run as `houlsby` multi (equal scores "
        f"are a check, not a coincidence); `shared_adapter-down`: `--shared_adapter.share down` (a shared down "
        f"projection, an up projection per task). Warmup 10% of the steps, max-len "
        f"{MAX_LEN}, learning rates and options from each method's config (configs/<m>.ini for stories260K, "
        f"configs/minilm-<m>.ini for MiniLM, with where they come from). bytes/step/rank: the gradient payload "
        f"all-reduced per step (exact, `train --metrics` bytes_allreduced, median over steps; a range when the "
        f"runs differ, e.g. single-task heads of 2 and 1 labels). Goal criterion: average at least houlsby-single's "
        f"minus the larger seed std of the two, and fewer trainable parameters per task.\n\n" + C.machine_note() + "\n")
    C.write_json(part + ".json", out)
    with open(os.path.join(C.RESULTS, part + ".md"), "w") as f:
        f.write("".join(md))


if __name__ == "__main__":
    main()
