#!/usr/bin/env python3
"""HF PEFT as an independent reference for deltatune's adapters, both ways, on the real all-MiniLM-L6-v2.

    .venv/bin/python tests/hf/peft_roundtrip.py DELTATUNE SOURCE_DIR

For LoRA (r 8 on q, v), (IA)^3 and prompt tuning (20 soft tokens) on MiniLM + SST-2:
1. deltatune -> PEFT: train 4 steps at 2 ranks, `export --format peft`, and load the directory with
   `peft.PeftModel.from_pretrained` on transformers' BertForSequenceClassification. Its logits on the very
   inputs `eval --predictions` wrote (first 48 dev examples, one at a time: no padding on the HF side)
   equal deltatune's within 1e-4; the adapter moved the logits (vs the bare model) by far more than that.
2. PEFT -> deltatune: `get_peft_model` with the equivalent config, every adapter value and the task head
   set to random values (so nothing is at its initial value), `save_pretrained`, then
   `train --init-from DIR` (1 step at lr 0: the values as read) and `eval --predictions`: same logits.
3. Trainable counts: PEFT's get_nb_trainable_parameters() (what print_trainable_parameters prints) for the
   same config equals `deltatune plan --json` trainable_params, for lora, ia3, prompt and prefix (PEFT's
   prefix_projection with encoder_hidden_size = --prefix.hidden: the same embedding + MLP we train).
4. --init-from refusals (exit 2, one line naming the cause): another r, another method, other targets.
"""
import json
import os
import shutil
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "launch"))
from e2e import check, finish, run_binary  # noqa: E402

try:
    import peft
    import transformers
except ImportError as e:
    sys.exit(f"peft_roundtrip.py: {e}; scripts/setup.sh installs transformers and peft into .venv")

DT, SRC = sys.argv[1], sys.argv[2]
os.chdir(SRC)
MODEL = "models/all-minilm-l6-v2"
if not os.path.isfile(os.path.join(MODEL, "model.safetensors")):
    sys.exit(f"FAIL: {MODEL} missing: run scripts/fetch-models.sh")
COMMON = ["--model", MODEL, "--tokenizer", MODEL + "/vocab.txt", "--task", "sst2", "--data", "data/glue",
          "--train.max-len", "64", "--train.eval-max", "48", "--train.eval-every", "0", "--threads", "1"]
METHODS = {
    "lora": ["--method", "lora", "--lora.r", "8", "--lora.alpha", "16", "--lora.targets", "q,v"],
    "ia3": ["--method", "ia3"],
    "prompt": ["--method", "prompt", "--prompt.length", "20"],
}
TOL = 1e-4
torch.set_num_threads(1)


def run(args, np=1):
    return run_binary(DT, args, np)


def base_model():
    transformers.logging.set_verbosity_error()
    return transformers.AutoModelForSequenceClassification.from_pretrained(MODEL, num_labels=2).eval()


def predictions(ckpt, tmp, name):
    path = os.path.join(tmp, name + ".predictions.jsonl")
    r = run(["eval", ckpt, "--predictions", path], np=2)
    check(r.returncode == 0, f"{name}: eval --predictions exits 0: " + r.stderr.strip()[-300:])
    return [json.loads(line) for line in open(path)] if r.returncode == 0 else []


@torch.no_grad()
def hf_logits(model, rows):
    out = []
    for row in rows:
        kwargs = {"input_ids": torch.tensor([row["input_ids"]])}
        if "token_type_ids" in row:
            kwargs["token_type_ids"] = torch.tensor([row["token_type_ids"]])
        out.append(model(**kwargs).logits[0])
    return torch.stack(out).double()


def compare(name, rows, model, bare):
    if not rows:
        return
    ours = torch.tensor([row["logits"] for row in rows], dtype=torch.float64)
    theirs = hf_logits(model, rows)
    err = (ours - theirs).abs().max().item()
    moved = (theirs - bare[:len(rows)]).abs().max().item()
    check(len(rows) == 48 and [r["index"] for r in rows] == list(range(48)), f"{name}: 48 predictions in dev order")
    check(err < TOL, f"{name}: logits equal PEFT's on {len(rows)} dev examples (max abs error {err:.2e} < {TOL})")
    check(moved > 100 * TOL, f"{name}: the adapter and head change the logits (by up to {moved:.3f} vs the bare model)")
    check(all(r["prediction"] == int(torch.tensor(r["logits"]).argmax()) for r in rows),
          f"{name}: prediction is the argmax of logits")


def peft_config(method):
    S = peft.TaskType.SEQ_CLS
    if method == "lora":
        return peft.LoraConfig(task_type=S, r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"])
    if method == "ia3":  # k, v and the FFN (our default): PEFT scales the FFN output linear's input
        ffn = r".*\.layer\.\d+\.output\.dense"
        return peft.IA3Config(task_type=S, target_modules=r".*\.(key|value)|" + ffn, feedforward_modules=ffn)
    if method == "prompt":
        return peft.PromptTuningConfig(task_type=S, num_virtual_tokens=20)
    return peft.PrefixTuningConfig(task_type=S, num_virtual_tokens=30, prefix_projection=True,
                                   encoder_hidden_size=512)


def plan_trainable(args):
    r = run(["plan", "--model", MODEL, "--task", "sst2", *args, "--json"])
    return json.loads(r.stdout)["trainable_params"] if r.returncode == 0 else None


tmp = tempfile.mkdtemp(prefix="dt-peft-")
try:
    bare_rows = None
    bare = None
    # ---- 3. trainable counts -----------------------------------------------------------------------------
    for method, args in list(METHODS.items()) + [("prefix", ["--method", "prefix", "--prefix.length", "30",
                                                              "--prefix.hidden", "512"])]:
        model = peft.get_peft_model(base_model(), peft_config(method))
        theirs, _ = model.get_nb_trainable_parameters()
        ours = plan_trainable(args)
        check(ours == theirs, f"{method}: trainable params {ours} == PEFT's {theirs}")

    for method, args in METHODS.items():
        # ---- 1. deltatune -> PEFT --------------------------------------------------------------------------
        out = os.path.join(tmp, method)
        r = run(["train", *COMMON, *args, "--train.steps", "4", "--train.batch-size", "8", "--train.lr", "0.01",
                 "--out", out], np=2)
        check(r.returncode == 0, f"{method}: train 4 steps at 2 ranks exits 0: " + r.stderr.strip()[-300:])
        rows = predictions(out, tmp, method)
        if bare is None and rows:
            bare = hf_logits(base_model(), rows)
        adapter = os.path.join(tmp, method + "-peft")
        r = run(["export", out, "--format", "peft", "--out", adapter])
        check(r.returncode == 0, f"{method}: export --format peft exits 0: " + r.stderr.strip()[-300:])
        if r.returncode == 0 and rows:
            model = peft.PeftModel.from_pretrained(base_model(), adapter).eval()
            compare(f"{method} deltatune -> PEFT", rows, model, bare)

        # ---- 2. PEFT -> deltatune --------------------------------------------------------------------------
        torch.manual_seed(7)
        model = peft.get_peft_model(base_model(), peft_config(method))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.requires_grad:  # adapter values and the head copy (modules_to_save)
                    p.copy_(1 + 0.3 * torch.randn_like(p) if "ia3_l" in name else 0.05 * torch.randn_like(p))
        made = os.path.join(tmp, method + "-made-by-peft")
        model.save_pretrained(made)
        model.eval()
        out = os.path.join(tmp, method + "-imported")
        r = run(["train", *COMMON, *args, "--init-from", made, "--train.steps", "1", "--train.lr", "0",
                 "--train.warmup-steps", "0", "--out", out], np=2)
        check(r.returncode == 0 and "init-from" in r.stderr + r.stdout,
              f"{method}: train --init-from a PEFT-saved adapter exits 0 and says so: " + r.stderr.strip()[-300:])
        rows = predictions(out, tmp, method + "-imported") if r.returncode == 0 else []
        compare(f"{method} PEFT -> deltatune", rows, model, bare)

    # ---- 4. refusals ------------------------------------------------------------------------------------
    made = os.path.join(tmp, "lora-made-by-peft")
    cases = [
        (METHODS["lora"][:4] + ["--lora.alpha", "16", "--lora.targets", "q,v", "--lora.r", "4"], ["lora.r", "r = 8"]),
        (METHODS["ia3"], ["LORA", "ia3"]),
        (METHODS["lora"] + ["--lora.targets", "q,k,v"], ["key.lora_A", "has no"]),
        (METHODS["lora"][:2] + ["--lora.targets", "q,v"] + ["--lora.alpha", "32"], ["lora_alpha", "--lora.alpha"]),
    ]
    for args, words in cases:
        r = run(["train", *COMMON, *args, "--init-from", made, "--train.steps", "1"])
        lines = r.stderr.strip().splitlines()
        check(r.returncode == 2 and len(lines) == 1 and all(w in r.stderr for w in words),
              f"--init-from refused ({' '.join(args[1:])}): exit {r.returncode}: {r.stderr.strip()[-300:]}")
    r = run(["train", *COMMON, *METHODS["lora"], "--init-from", os.path.join(tmp, "nowhere"), "--train.steps", "1"])
    check(r.returncode == 2 and "not a directory" in r.stderr, "--init-from a missing directory: exit 2: " +
          r.stderr.strip()[-200:])
finally:
    shutil.rmtree(tmp, ignore_errors=True)

finish()
