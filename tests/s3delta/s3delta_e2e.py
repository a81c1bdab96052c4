"""tests/s3delta/s3delta_e2e.py DELTATUNE SOURCE_DIR — S3Delta end to end on stories260K + SST-2 (issue 17 §2).

`deltatune search --method s3delta` on 2 ranks writes a structure that every rank agreed on and that meets its
budget exactly (total <= budget and every module left out is larger than what remains; the chosen set is the
greedy fill by the recorded p); the search's bytes per step are both groups' (weights + head, and the α's);
`plan --structure` counts exactly the structure's total (+ the head) and `train --structure` trains it on 2 ranks
(and `eval` rebuilds it from the checkpoint); a budget covering every module keeps all of them; one rank with the
doubled batch chooses the same structure; and bad input is refused with one line and exit 2."""
import json
import os
import re
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "launch"))
from e2e import check, finish, run_binary  # noqa: E402

binary, src = sys.argv[1], sys.argv[2]
os.chdir(src)
tmp = tempfile.mkdtemp(prefix="s3delta_e2e_")
MODEL = ["--model", "data/stories260K/stories260K.bin", "--tokenizer", "data/stories260K/tok512.bin",
         "--data", "data/glue", "--task", "sst2", "--threads", "1", "--train.max-len", "32"]
HEAD = 2 * 64  # stories260K's score head (2 labels x d_model 64)

# The search space of stories260K (5 layers, d 64, d_ff 172, 8 heads of 8, 4 kv heads) in closed form, at the
# defaults: LoRA r = 1 on q, k, v, o, wi, wo; biases after q, k, v, o, the FFN intermediate and output and
# both norms; adapters (m = 64 / 32) after attention and FFN; both norms' gains; the final norm's bias and gain.
d, f, q, kv, L, m = 64, 172, 64, 32, 5, 2
lora = (d + q) + 2 * (d + kv) + (q + d) + (d + f) + (f + d)
bitfit = q + 2 * kv + d + f + d + 2 * d
SPACE = L * (lora + bitfit + 2 * (2 * d * m + m + d) + 2 * d) + 2 * d
CANDIDATES = 18 * L + 2


def one_line_refusal(r, words, what):
    err = r.stderr.strip()
    check(r.returncode == 2 and len(err.splitlines()) == 1 and all(w in err for w in words),
          f"{what}: exit 2, one line naming {words} (exit {r.returncode}: {err[-300:]})")


def greedy(cands, budget):
    order = sorted(range(len(cands)), key=lambda i: -cands[i]["p"])  # stable: ties keep search-space order
    total, taken = 0, set()
    for i in order:
        if total + cands[i]["params"] <= budget:
            total += cands[i]["params"]
            taken.add(i)
    return taken


# ---- 1. search on 2 ranks ------------------------------------------------------------------------------
structure, metrics = os.path.join(tmp, "s.json"), os.path.join(tmp, "search.jsonl")
steps = 6
r = run_binary(binary, ["search", "--method", "s3delta", *MODEL, "--train.steps", str(steps), "--train.batch-size", "4",
                        "--s3delta.budget", "0.01", "--out", structure, "--metrics", metrics, "--log-all-ranks"], np=2)
check(r.returncode == 0 and os.path.exists(structure), f"search on 2 ranks writes {structure} (exit {r.returncode})")
hashes = re.findall(r"\[rank (\d)\] structure ([0-9a-f]{16}) \(the same on all 2 ranks\)", r.stdout)
check(len(hashes) == 2 and hashes[0][1] == hashes[1][1], f"both ranks report the same structure hash: {hashes}")
if not os.path.exists(structure):
    print(r.stdout[-3000:], r.stderr[-3000:])
    finish()
s = json.load(open(structure))
cands, modules, budget, total = s["candidates"], s["modules"], s["budget"]["params"], s["total_params"]
check(budget == 2600 and s["backbone"]["params"] == 260032, f"budget 0.01 of 260,032 = 2,600 parameters: {budget}")
check(len(cands) == CANDIDATES and s["search_space"]["params"] == SPACE == sum(c["params"] for c in cands),
      f"the search space: {len(cands)} candidates, {s['search_space']['params']} params (closed form {CANDIDATES}, {SPACE})")
check(total == sum(mod["params"] for mod in modules) and [mod["name"] for mod in modules] ==
      [c["name"] for c in cands if c["chosen"]], f"total_params {total} is the chosen modules' sum")
left = [c for c in cands if not c["chosen"]]
check(total <= budget and left and all(c["params"] > budget - total for c in left),
      f"the budget is met exactly: {total} <= {budget} and the smallest module left out "
      f"({min(c['params'] for c in left) if left else '-'}) exceeds the {budget - total} left")
check(greedy(cands, budget) == {i for i, c in enumerate(cands) if c["chosen"]},
      "the chosen set is the greedy fill by the recorded p")
check(s["search"]["steps"] == str(steps) and s["search"]["ranks"] == "2", f"search info: {s['search']}")
rows = [json.loads(line) for line in open(metrics)]
want_bytes = 4 * (SPACE + HEAD) + 4 * CANDIDATES
check(len(rows) == steps and all(row["bytes_allreduced"] == want_bytes and row["alpha_bytes_allreduced"] ==
                                 4 * CANDIDATES and row["collectives"] == 2 for row in rows),
      f"every step all-reduces weights + head and the α's: {want_bytes} B in 2 collectives "
      f"({[row['bytes_allreduced'] for row in rows]})")

# ---- 2. plan and train the structure ----------------------------------------------------------------------
r = run_binary(binary, ["plan", "--model", "data/stories260K/stories260K.bin", "--structure", structure, "--json"])
plan = json.loads(r.stdout) if r.returncode == 0 else {}
check(plan.get("trainable_params") == total + HEAD and f"modules={len(modules)}" in plan.get("method", ""),
      f"plan --structure: {plan.get('trainable_params')} trainable == the structure's {total} + the head's {HEAD}")
ckpt = os.path.join(tmp, "ckpt")
r = run_binary(binary, ["train", *MODEL, "--structure", structure, "--train.steps", "3", "--train.batch-size", "4",
                        "--train.eval-max", "32", "--out", ckpt], np=2)
check(r.returncode == 0 and f"trainable params: {total + HEAD:,} ||" in r.stdout and
      f"allreduced {4 * (total + HEAD)} B" in r.stdout,
      f"train --structure on 2 ranks: {total + HEAD:,} trainable, {4 * (total + HEAD)} B a step (exit {r.returncode})")
log_acc = re.findall(r"eval step 3: dev accuracy ([0-9.]+) on 32", r.stdout)
r = run_binary(binary, ["eval", ckpt])
check(r.returncode == 0 and log_acc and f"accuracy {log_acc[0]}" in r.stdout,
      f"eval rebuilds the structure from the checkpoint: accuracy {log_acc} (exit {r.returncode}: {r.stderr[-200:]})")

# ---- 3. a budget covering every module keeps them all ------------------------------------------------------
every = os.path.join(tmp, "all.json")
r = run_binary(binary, ["search", *MODEL, "--s3delta.budget", "0.5", "--out", every])
a = json.load(open(every)) if r.returncode == 0 else {"modules": [], "total_params": 0}
check(len(a["modules"]) == CANDIDATES and a["total_params"] == SPACE and "nothing to search" in r.stdout,
      f"budget 0.5 covers the space: {len(a['modules'])} of {CANDIDATES} modules, {a['total_params']} params kept")

# ---- 4. one rank with the doubled batch chooses the same structure ------------------------------------------
single = os.path.join(tmp, "np1.json")
r = run_binary(binary, ["search", *MODEL, "--train.steps", str(steps), "--train.batch-size", "8",
                        "--s3delta.budget", "0.01", "--out", single])
one = json.load(open(single)) if r.returncode == 0 else {"modules": [], "candidates": []}
check([x["name"] for x in one["modules"]] == [x["name"] for x in modules],
      "np=1 with batch 8 chooses the modules np=2 with batch 4 chose")
diff = max((abs(x["alpha"] - y["alpha"]) for x, y in zip(one["candidates"], cands)), default=1)
check(diff < 1e-4, f"and the α's agree within 1e-4 (max diff {diff:.2e})")

# ---- 5. refusals ---------------------------------------------------------------------------------------------
out = os.path.join(tmp, "never.json")
one_line_refusal(run_binary(binary, ["search", *MODEL, "--out", out]), ["260,032", "nothing fits", "--s3delta.budget"],
                 "the default budget (26 parameters of stories260K) fits no module")
one_line_refusal(run_binary(binary, ["search", "--method", "lora", "--out", out]), ["--method lora", "s3delta"],
                 "search --method lora")
one_line_refusal(run_binary(binary, ["search", *MODEL]), ["--out FILE"], "search without --out")
one_line_refusal(run_binary(binary, ["search", *MODEL, "--task", "sst2,cola", "--s3delta.budget", "0.01", "--out", out]),
                 ["one --task"], "a multi-task search")
one_line_refusal(run_binary(binary, ["search", "--s3delta.kinds", "lora,prefix", "--out", out]), ["prefix"],
                 "an unknown module kind")
one_line_refusal(run_binary(binary, ["search", "--s3delta.heldout", "1.5", "--out", out]), ["--s3delta.heldout"],
                 "a held-out fraction outside (0, 1)")
one_line_refusal(run_binary(binary, ["search", "--s3delta.budget", "0", "--out", out]), ["--s3delta.budget"],
                 "a zero budget")
one_line_refusal(run_binary(binary, ["search", "--structure", structure, "--out", out]), ["--structure"],
                 "search --structure")
one_line_refusal(run_binary(binary, ["search", "--no-such-option"]), ["no-such-option"], "search, unknown option")
check(run_binary(binary, ["search", "--help"]).returncode == 0, "search --help")
missing = os.path.join(tmp, "missing.json")
one_line_refusal(run_binary(binary, ["train", *MODEL, "--structure", missing]), [missing, "cannot read"],
                 "train --structure of a missing file")
bad = os.path.join(tmp, "bad.json")
open(bad, "w").write('{"format": ')
one_line_refusal(run_binary(binary, ["plan", "--structure", bad]), [bad, "not a JSON object"], "a malformed file")
one_line_refusal(run_binary(binary, ["plan", "--model", "t5-small", "--structure", structure]),
                 [structure, "another one", "architecture llama vs t5"], "a structure of another backbone")
one_line_refusal(run_binary(binary, ["train", "--structure", structure, "--method", "lora"]),
                 ["implies --method s3delta", "--method lora"], "--structure with another --method")
one_line_refusal(run_binary(binary, ["plan", "--method", "s3delta"]), ["--structure FILE", "deltatune search"],
                 "--method s3delta without a structure")
check(run_binary(binary, ["train", "--structure", structure, "--print-config"]).stdout.count("method = s3delta") == 1,
      "--structure FILE implies --method s3delta (--print-config records it)")
shutil.rmtree(tmp, ignore_errors=True)
finish()
