#!/usr/bin/env python3
"""tests/tasks/multitask_train.py — multi-task training end to end through the binary (issue 16 §1).

  multitask_train.py DELTATUNE SOURCE_DIR

On the bundled stories260K (Llama, a classifier head) with `--task sst2,cola,stsb` (two classification
tasks and the STS-B regression), 2 ranks, LoRA:
1. the metrics hold eval/<task>/<metric> for every task (accuracy; CoLA mcc; STS-B pearson and spearman,
   no accuracy) and eval_average == the mean of the tasks' GLUE scores computed here from those keys;
   the log names the mixing rates, which equal the examples-proportional rates computed here from the
   bundled files' row counts;
2. resume is bit for bit: steps 5..8 resumed from the step-4 checkpoint (whose task_sampler attribute
   holds the mixture's state) give the uninterrupted run's losses exactly, at 2 ranks;
3. `eval` of the final checkpoint (1 rank) prints every task's metrics equal to the training log's
   final evaluation, and `eval --task cola` only CoLA's;
   With --multitask.batch mixed (a task per row) a run trains and resumes bit for bit as well;
4. `plan --task sst2,cola,stsb` counts the stacked head: 5 rows of score.weight [labels, 64] more than the
   LoRA tensors (plan --task sst2 has 2 rows);
5. refusals (exit 2, one line naming the cause): a task named twice, an unknown task, an unknown
   --multitask.mix or --multitask.batch, STS-B on T5's label-word head, `eval --task rte` of a checkpoint that never trained RTE.
"""
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "launch"))
from e2e import check, finish, run_binary  # noqa: E402

DT, SRC = sys.argv[1], sys.argv[2]
os.chdir(SRC)
tmp = tempfile.mkdtemp(prefix="dt-multitask-")
TASKS = "sst2,cola,stsb"
COMMON = ["--model", "data/stories260K/stories260K.bin", "--tokenizer", "data/stories260K/tok512.bin",
          "--task", TASKS, "--method", "lora", "--train.batch-size", "8", "--train.max-len", "32",
          "--train.lr", "0.003", "--train.eval-max", "48", "--threads", "1"]


def records(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def losses(path):
    return {r["step"]: r["loss"] for r in records(path) if "loss" in r}


def rows(path, header):
    with open(path, encoding="utf-8") as f:
        n = sum(1 for line in f if line.strip())
    return n - (1 if header else 0)


# ---- 1. a multi-task run and its metrics ------------------------------------------------------------
out_a, met_a = os.path.join(tmp, "a"), os.path.join(tmp, "a.jsonl")
r = run_binary(DT, ["train"] + COMMON + ["--train.steps", "8", "--train.eval-every", "4", "--out", out_a,
                                         "--ckpt.every", "4", "--metrics", met_a], np=2)
check(r.returncode == 0, "2-rank multi-task train exits 0: " + r.stderr.strip()[-400:])
evals = [x for x in records(met_a) if "eval_average" in x] if os.path.exists(met_a) else []
check(len(evals) == 2, f"two multi-task evaluations (steps 4 and 8), got {len(evals)}")
if evals:
    final = evals[-1]
    keys = {k for k in final if k.startswith("eval/")}
    want = {"eval/sst2/accuracy", "eval/sst2/count", "eval/cola/accuracy", "eval/cola/mcc", "eval/cola/count",
            "eval/stsb/pearson", "eval/stsb/spearman", "eval/stsb/count"}
    check(keys == want, f"per-task keys {sorted(keys)}")
    check(final["eval/sst2/count"] == 48 and final["eval/stsb/count"] == 48, "each dev set cut to --train.eval-max 48")
    glue = [final["eval/sst2/accuracy"], final["eval/cola/mcc"],
            (final["eval/stsb/pearson"] + final["eval/stsb/spearman"]) / 2]
    check(abs(final["eval_average"] - sum(glue) / 3) < 1e-12,
          f"eval_average {final['eval_average']} == mean of the GLUE scores {sum(glue) / 3}")
    check(-1 <= final["eval/stsb/pearson"] <= 1 and -1 <= final["eval/stsb/spearman"] <= 1, "correlations in [-1, 1]")
sizes = [rows("data/glue/SST-2/train.tsv", True), rows("data/glue/CoLA/train.tsv", False),
         rows("data/glue/STS-B/train.tsv", True)]
rates = ", ".join(f"{t} {n / sum(sizes):.3f}" for t, n in zip(TASKS.split(","), sizes))
check(f"proportional mixing: {rates}" in r.stderr + r.stdout, f"the log names the mixing rates ({rates})")

# ---- 2. resume from step 4: losses of steps 5..8 bit for bit ----------------------------------------
ckpt4 = os.path.join(out_a, "ckpt-00000004.h5")
insp = run_binary(DT, ["inspect", ckpt4])
check(insp.returncode == 0, "inspect the step-4 checkpoint")
out_b, met_b = os.path.join(tmp, "b"), os.path.join(tmp, "b.jsonl")
r = run_binary(DT, ["train"] + COMMON + ["--train.steps", "8", "--train.eval-every", "4", "--out", out_b,
                                         "--resume", ckpt4, "--metrics", met_b], np=2)
check(r.returncode == 0, "resumed multi-task run exits 0: " + r.stderr.strip()[-400:])
a, b = losses(met_a), losses(met_b) if os.path.exists(met_b) else {}
check(sorted(b) == [5, 6, 7, 8], f"the resumed run takes steps 5..8 (got {sorted(b)})")
check(all(a[s] == b.get(s) for s in range(5, 9)), "losses of steps 5..8 equal the uninterrupted run's bit for bit: " +
      str([(a.get(s), b.get(s)) for s in range(5, 9)]))
if evals and os.path.exists(met_b):
    eb = [x for x in records(met_b) if "eval_average" in x]
    check(bool(eb) and eb[-1]["eval_average"] == evals[-1]["eval_average"], "the resumed run's final evaluation equals")

# ---- 2b. mixed batches (a task per row): they train, and resume bit for bit too -------------------------
out_m, met_m = os.path.join(tmp, "m"), os.path.join(tmp, "m.jsonl")
MIXED = ["--multitask.batch", "mixed", "--train.steps", "4", "--train.eval-every", "0"]
r = run_binary(DT, ["train"] + COMMON + MIXED + ["--out", out_m, "--ckpt.every", "2", "--metrics", met_m], np=2)
check(r.returncode == 0, "2-rank mixed-batch train exits 0: " + r.stderr.strip()[-400:])
check("a task per row (mixed batches)" in r.stderr + r.stdout, "the log says the batches are mixed")
out_n, met_n = os.path.join(tmp, "n"), os.path.join(tmp, "n.jsonl")
r = run_binary(DT, ["train"] + COMMON + MIXED + ["--out", out_n, "--resume", os.path.join(out_m, "ckpt-00000002.h5"),
                                                 "--metrics", met_n], np=2)
check(r.returncode == 0, "resumed mixed-batch run exits 0: " + r.stderr.strip()[-400:])
m, n = (losses(met_m) if os.path.exists(met_m) else {}), (losses(met_n) if os.path.exists(met_n) else {})
check(sorted(n) == [3, 4] and all(m.get(s) == n.get(s) for s in (3, 4)),
      f"mixed batches: steps 3..4 resumed equal the uninterrupted run's bit for bit: {[(m.get(s), n.get(s)) for s in (3, 4)]}")
check(len(set(m.values())) == len(m) and len(m) == 4, "four distinct mixed-batch losses")

# ---- 3. eval of the final checkpoint equals the log --------------------------------------------------
ev_json = os.path.join(tmp, "eval.json")
r = run_binary(DT, ["eval", out_a, "--json", ev_json])
check(r.returncode == 0, "eval of the multi-task checkpoint exits 0: " + r.stderr.strip()[-300:])
if r.returncode == 0 and evals:
    with open(ev_json) as f:
        ej = json.load(f)
    same = all(abs(ej[k] - evals[-1][k]) < 1e-9 for k in evals[-1] if k.startswith("eval"))
    check(same, "eval (1 rank) == the training log's final evaluation, every key")
r = run_binary(DT, ["eval", out_a, "--task", "cola", "--json", ev_json])
check(r.returncode == 0, "eval --task cola of the multi-task checkpoint")
if r.returncode == 0 and evals:
    with open(ev_json) as f:
        ej = json.load(f)
    check(ej.get("eval/cola/mcc") == evals[-1]["eval/cola/mcc"] and "eval/sst2/accuracy" not in ej,
          "eval --task cola: CoLA's metrics only, equal to the log")

# ---- 4. plan counts the stacked head ------------------------------------------------------------------
def plan(task):
    p = run_binary(DT, ["plan", "--json", "--model", "data/stories260K/stories260K.bin", "--method", "lora",
                        "--task", task])
    return json.loads(p.stdout) if p.returncode == 0 else {}


p_multi, p_one = plan(TASKS), plan("sst2")
check(p_multi.get("trainable_params", 0) - p_one.get("trainable_params", 0) == 3 * 64,
      f"plan: the stacked head adds 3 rows of 64 ({p_multi.get('trainable_params')} vs {p_one.get('trainable_params')})")

# ---- 5. refusals ---------------------------------------------------------------------------------------
def refused(args, words, what):
    p = run_binary(DT, args)
    err = p.stderr.strip()
    check(p.returncode == 2 and all(w in err for w in words), f"{what}: exit {p.returncode}, '{err[-200:]}'")


refused(["train", "--task", "sst2,sst2", "--train.steps", "1"], ["sst2", "twice"], "a task named twice")
refused(["train", "--task", "sst2,mnli", "--train.steps", "1"], ["mnli"], "an unknown task")
refused(["train", "--task", "sst2,cola", "--multitask.mix", "uniform", "--train.steps", "1"], ["uniform"],
        "an unknown mixing")
refused(["train", "--task", "sst2,cola", "--multitask.batch", "rows", "--train.steps", "1"], ["rows"],
        "an unknown --multitask.batch")
refused(["train", "--model", "tiny-t5", "--tokenizer", "data/tokenizers/t5-spiece.model", "--task", "stsb",
         "--train.steps", "1"], ["stsb"], "STS-B on T5 label words")
refused(["eval", out_a, "--task", "rte"], ["rte"], "eval on a task the checkpoint never trained")

shutil.rmtree(tmp, ignore_errors=True)
finish()
