#!/usr/bin/env python3
"""tests/launch/export_eval.py — `deltatune export` and `deltatune eval`, end to end through the binary.

  export_eval.py DELTATUNE SOURCE_DIR

Checked against an independent reference in plain torch (the base weights read from the llama2.c
file and put in HF's layout here; safetensors parsed by hand: Debian's python3 has no safetensors):
1. LoRA r=8 on q,k,v,o (configs/main.ini's data and schedule, 2 ranks, 20 steps, checkpoints at 10 and 20):
   - eval at np 1 and np 2 prints, and writes with --json / --metrics, the dev accuracy the training
     log has at that step;
   - export --format peft: adapter_config.json has HF PEFT's LoRA fields (peft_type, r, lora_alpha,
     target_modules with HF module names, task_type, base_model_name_or_path, fan_in_fan_out false,
     modules_to_save) and adapter_model.safetensors exactly the keys/shapes PEFT saves
     (base_model.model.<module>.lora_A.weight [r, in], .lora_B.weight [out, r], the head as
     base_model.model.score.weight);
   - export --format merged: W == W0 + (alpha/r)·B·A for every target (B, A from the adapter file),
     every other tensor == W0 bit for bit, the head == the adapter's, dtype float32, and the file
     reads back (`deltatune inspect`);
   - an existing file is kept without --force and replaced with it.
2. (IA)^3: the adapter's ia3_l shapes/places (k/v [out, 1], down_proj [1, d_ff], feedforward_modules)
   and merged == rows of k/v and columns of down_proj scaled by l.
3. FISH (magnitude mask, no Fisher): merged − W0 is nonzero on at most k entries; eval == log.
4. prompt tuning: prompt_embeddings [P, d] and base_model.score.weight.
5. Errors (exit 2, one clear line): --format peft of FISH (no PEFT format); a checkpoint of another
   backbone (other shapes; same shapes but other weights: sha256); eval on another task.
"""
import json
import os
import shutil
import struct
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e import check, finish, run_binary  # noqa: E402

DT, SRC = sys.argv[1], sys.argv[2]
os.chdir(SRC)
BASE = "data/stories260K/stories260K.bin"


def run(args, np=1):
    return run_binary(DT, args, np)


# ---- independent readers -------------------------------------------------------------------------------

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
          "I64": torch.int64, "I32": torch.int32}


def read_safetensors(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n:]
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        t = torch.frombuffer(bytearray(data[b:end]), dtype=DTYPES[e["dtype"]]) if end > b else torch.empty(0)
        out[name] = t.reshape(e["shape"])
    return out, meta, {k: e["dtype"] for k, e in header.items()}


def hf_permute(w, heads):
    # HF's convert_llama_weights_to_hf: Meta's interleaved rotary rows -> rotate_half order.
    rows, cols = w.shape
    return w.view(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def read_llama2c_hf(path):
    raw = open(path, "rb").read()
    dim, hidden, layers, heads, kv_heads, vocab, seq = struct.unpack("<7i", raw[:28])
    vocab = abs(vocab)
    data = torch.frombuffer(bytearray(raw[28:]), dtype=torch.float32)
    D = dim // heads
    sizes = [("emb", (vocab, dim)), ("rms_att", (layers, dim)), ("wq", (layers, dim, dim)),
             ("wk", (layers, kv_heads * D, dim)), ("wv", (layers, kv_heads * D, dim)), ("wo", (layers, dim, dim)),
             ("rms_ffn", (layers, dim)), ("w1", (layers, hidden, dim)), ("w2", (layers, dim, hidden)),
             ("w3", (layers, hidden, dim)), ("rms_final", (dim,))]
    W, off = {}, 0
    for name, shape in sizes:
        n = 1
        for s in shape:
            n *= s
        W[name] = data[off:off + n].view(*shape)
        off += n
    hf = {"model.embed_tokens.weight": W["emb"], "model.norm.weight": W["rms_final"]}
    for i in range(layers):
        p = f"model.layers.{i}."
        hf[p + "input_layernorm.weight"] = W["rms_att"][i]
        hf[p + "post_attention_layernorm.weight"] = W["rms_ffn"][i]
        hf[p + "self_attn.q_proj.weight"] = hf_permute(W["wq"][i], heads)
        hf[p + "self_attn.k_proj.weight"] = hf_permute(W["wk"][i], kv_heads)
        hf[p + "self_attn.v_proj.weight"] = W["wv"][i]
        hf[p + "self_attn.o_proj.weight"] = W["wo"][i]
        hf[p + "mlp.gate_proj.weight"] = W["w1"][i]
        hf[p + "mlp.down_proj.weight"] = W["w2"][i]
        hf[p + "mlp.up_proj.weight"] = W["w3"][i]
    return hf, dict(dim=dim, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads)


def eval_log(metrics_path):
    out = {}
    for line in open(metrics_path):
        j = json.loads(line)
        if "eval_accuracy" in j:
            out[j["step"]] = j
    return out


def train(tmp, name, args, steps=20, np=2):
    out, metrics = os.path.join(tmp, name), os.path.join(tmp, name + ".jsonl")
    r = run(["train", *args, "--train.steps", str(steps), "--train.eval-every", "10", "--train.eval-max", "200",
             "--ckpt.every", "10", "--out", out, "--metrics", metrics, "--threads", "1"], np=np)
    check(r.returncode == 0, f"train {name} exits 0: " + r.stderr.strip()[-300:])
    return out, metrics


W0, CFG = read_llama2c_hf(BASE)
tmp = tempfile.mkdtemp(prefix="dt-export-")
try:
    # ---- 1. LoRA ----------------------------------------------------------------------------------------
    ck, metrics = train(tmp, "lora", ["--config", "configs/main.ini", "--method", "lora", "--lora.targets", "q,k,v,o",
                                      "--lora.r", "8", "--lora.alpha", "16", "--train.lr", "0.003"])
    logged = eval_log(metrics)
    check(sorted(logged) == [10, 20], f"training logged evals at steps 10 and 20: {sorted(logged)}")
    for step in (10, 20):
        for np in (1, 2):
            js, ml = os.path.join(tmp, f"eval{step}-{np}.json"), os.path.join(tmp, f"eval{step}-{np}.jsonl")
            r = run(["eval", os.path.join(ck, f"ckpt-{step:08d}.h5"), "--json", js, "--metrics", ml], np=np)
            check(r.returncode == 0, f"eval step {step} np {np} exits 0: " + r.stderr.strip()[-300:])
            if r.returncode != 0:
                continue
            j = json.load(open(js))
            line = json.loads(open(ml).read().strip())
            want = logged[step]
            check(j["step"] == step and j["eval_accuracy"] == want["eval_accuracy"] and
                  j["eval_count"] == want["eval_count"] == 200,
                  f"eval step {step} np {np}: accuracy {j['eval_accuracy']} == training log's {want['eval_accuracy']}")
            check(line == {"step": step, "eval_accuracy": want["eval_accuracy"], "eval_count": 200},
                  f"eval --metrics line at step {step} np {np} has train's keys and values: {line}")
            check(f"dev accuracy {want['eval_accuracy']:.4f}" in r.stdout, f"eval prints the accuracy (np {np})")

    peft_dir, merged_dir = os.path.join(tmp, "peft"), os.path.join(tmp, "merged")
    r = run(["export", ck, "--format", "peft", "--out", peft_dir])
    check(r.returncode == 0, "export --format peft (lora) exits 0: " + r.stderr.strip()[-300:])
    config = json.load(open(os.path.join(peft_dir, "adapter_config.json")))
    want = {"peft_type": "LORA", "task_type": "SEQ_CLS", "r": 8, "lora_alpha": 16, "fan_in_fan_out": False,
            "bias": "none", "base_model_name_or_path": BASE, "modules_to_save": ["score"], "inference_mode": True,
            "lora_dropout": 0.0}
    for k, v in want.items():
        check(config.get(k) == v, f"adapter_config.json {k} == {v!r} (got {config.get(k)!r})")
    check(sorted(config.get("target_modules", [])) == ["k_proj", "o_proj", "q_proj", "v_proj"],
          f"target_modules are HF's names: {config.get('target_modules')}")
    adapter, meta, dtypes = read_safetensors(os.path.join(peft_dir, "adapter_model.safetensors"))
    expected_keys = {"base_model.model.score.weight"}
    for i in range(CFG["layers"]):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            for ab in ("lora_A", "lora_B"):
                expected_keys.add(f"base_model.model.model.layers.{i}.self_attn.{proj}.{ab}.weight")
    check(set(adapter) == expected_keys, f"adapter keys are PEFT's ({len(adapter)} vs {len(expected_keys)}): "
          f"{sorted(set(adapter) ^ expected_keys)[:4]}")
    shapes_ok = True
    for key, t in adapter.items():
        if ".lora_" not in key:
            continue
        module = key[len("base_model.model."):key.index(".lora_")]
        w = W0[module + ".weight"]
        shapes_ok &= list(t.shape) == ([8, w.shape[1]] if ".lora_A." in key else [w.shape[0], 8])
    check(shapes_ok, "lora_A is [r, in] and lora_B [out, r] for every target")
    check(list(adapter["base_model.model.score.weight"].shape) == [2, CFG["dim"]], "score head [2, dim]")
    check(set(dtypes.values()) == {"F32"} and meta.get("format") == "pt", "adapter is F32 with format=pt metadata")

    r = run(["export", ck, "--format", "merged", "--out", merged_dir])
    check(r.returncode == 0, "export --format merged (lora) exits 0: " + r.stderr.strip()[-300:])
    merged, meta, dtypes = read_safetensors(os.path.join(merged_dir, "model.safetensors"))
    check(set(merged) == set(W0) | {"score.weight"}, f"merged file has every backbone tensor + score: "
          f"{sorted(set(merged) ^ (set(W0) | {'score.weight'}))[:4]}")
    check(set(dtypes.values()) == {"F32"}, "merged dtypes kept (F32)")
    check(meta.get("hidden_size") == str(CFG["dim"]) and meta.get("num_key_value_heads") == str(CFG["kv_heads"]),
          "merged __metadata__ carries the HF config keys")
    worst, targets, untouched = 0.0, 0, True
    for name, w0 in W0.items():
        module = name[:-len(".weight")]
        a = adapter.get(f"base_model.model.{module}.lora_A.weight")
        if a is None:
            untouched &= torch.equal(merged[name], w0)
            continue
        b = adapter[f"base_model.model.{module}.lora_B.weight"]
        ref = w0.double() + (16 / 8) * (b.double() @ a.double())
        worst = max(worst, (merged[name].double() - ref).abs().max().item())
        check(not torch.equal(merged[name], w0), f"{name} changed by the merge")
        targets += 1
    check(targets == 4 * CFG["layers"], f"{targets} LoRA targets merged")
    check(worst < 1e-6, f"merged W == W0 + (alpha/r)·B·A for every target (max error {worst:.2e})")
    check(untouched, "every other tensor equals the base weights bit for bit")
    check(torch.equal(merged["score.weight"], adapter["base_model.model.score.weight"]), "merged head == adapter's")
    r = run(["inspect", os.path.join(merged_dir, "model.safetensors"), "--json"])
    check(r.returncode == 0 and json.loads(r.stdout)["params"] == sum(t.numel() for t in merged.values()),
          "deltatune inspect reads the merged file back")
    sizes = {f: os.path.getsize(os.path.join(d, f)) for d, f in
             ((peft_dir, "adapter_model.safetensors"), (merged_dir, "model.safetensors"))}
    print(f"     sizes: adapter {sizes['adapter_model.safetensors']} B, merged {sizes['model.safetensors']} B")

    before = open(os.path.join(merged_dir, "model.safetensors"), "rb").read()
    r = run(["export", os.path.join(ck, "ckpt-00000010.h5"), "--format", "merged", "--out", merged_dir])
    check(r.returncode == 2 and "--force" in r.stderr and len(r.stderr.strip().splitlines()) == 1,
          "an existing file is kept without --force (exit 2, one line): " + r.stderr.strip())
    check(open(os.path.join(merged_dir, "model.safetensors"), "rb").read() == before, "... and is unchanged")
    r = run(["export", os.path.join(ck, "ckpt-00000010.h5"), "--format", "merged", "--out", merged_dir, "--force"])
    check(r.returncode == 0 and open(os.path.join(merged_dir, "model.safetensors"), "rb").read() != before,
          "--force replaces it (step 10's weights now)")
    check(not [f for f in os.listdir(merged_dir) if f.endswith(".tmp")], "no temporary file left behind")

    # ---- 5. errors ----------------------------------------------------------------------------------------
    r = run(["eval", ck, "--task", "cola"])
    check(r.returncode == 2 and "sst2" in r.stderr and "cola" in r.stderr, "eval on another task: exit 2: " +
          r.stderr.strip()[-200:])
    r = run(["export", ck, "--format", "merged", "--out", os.path.join(tmp, "x"),
             "--model", "tests/fixtures/llama/tiny.safetensors"])
    check(r.returncode == 2 and "trained on backbone" in r.stderr and len(r.stderr.strip().splitlines()) == 1,
          "a checkpoint of another backbone (other shapes): exit 2, one line: " + r.stderr.strip()[-300:])
    r = run(["eval", ck, "--model", "tiny-llama"])
    check(r.returncode == 2 and "another one" in r.stderr and "hidden_size" in r.stderr,
          "a checkpoint of another backbone (a config that loads): exit 2 naming the difference: " +
          r.stderr.strip()[-300:])
    other = os.path.join(tmp, "stories260K-other.bin")
    shutil.copy(BASE, other)
    with open(other, "r+b") as f:  # same shapes, one weight changed
        f.seek(28 + 4 * 1000)
        f.write(struct.pack("<f", 0.125))
    r = run(["export", ck, "--format", "merged", "--out", os.path.join(tmp, "x"), "--model", other])
    check(r.returncode == 2 and "sha256" in r.stderr, "same shapes, other weights: refused by sha256, exit 2: " +
          r.stderr.strip()[-300:])
    moved = os.path.join(tmp, "moved.bin")
    shutil.copy(BASE, moved)
    r = run(["eval", ck, "--model", moved])
    check(r.returncode == 0 and f"dev accuracy {logged[20]['eval_accuracy']:.4f}" in r.stdout,
          "--model pointing at moved identical weights is accepted")

    # ---- 2. (IA)^3 ------------------------------------------------------------------------------------------
    ck, _ = train(tmp, "ia3", ["--config", "configs/ia3.ini", "--train.lr", "0.03"], steps=10)
    ia3_dir = os.path.join(tmp, "ia3")
    r1 = run(["export", ck, "--format", "peft", "--out", ia3_dir])
    r2 = run(["export", ck, "--format", "merged", "--out", ia3_dir])
    check(r1.returncode == 0 and r2.returncode == 0, "ia3 exports (peft, merged) exit 0: " + r1.stderr[-200:] +
          r2.stderr[-200:])
    config = json.load(open(os.path.join(ia3_dir, "adapter_config.json")))
    check(config.get("peft_type") == "IA3" and sorted(config.get("target_modules", [])) ==
          ["down_proj", "k_proj", "v_proj"] and config.get("feedforward_modules") == ["down_proj"],
          f"ia3 config: {config.get('peft_type')} {config.get('target_modules')} {config.get('feedforward_modules')}")
    adapter, _, _ = read_safetensors(os.path.join(ia3_dir, "adapter_model.safetensors"))
    merged, _, _ = read_safetensors(os.path.join(ia3_dir, "model.safetensors"))
    kv = CFG["kv_heads"] * CFG["dim"] // CFG["heads"]
    ok_shapes, worst, moved_l = True, 0.0, False
    for i in range(CFG["layers"]):
        p = f"model.layers.{i}."
        for proj, shape in (("self_attn.k_proj", [kv, 1]), ("self_attn.v_proj", [kv, 1]),
                            ("mlp.down_proj", [1, CFG["hidden"]])):
            l = adapter.get(f"base_model.model.{p}{proj}.ia3_l")
            ok_shapes &= l is not None and list(l.shape) == shape
            if l is None:
                continue
            moved_l |= not torch.equal(l, torch.ones_like(l))
            ref = W0[p + proj + ".weight"].double() * l.double()  # [out,1] scales rows, [1,in] columns
            worst = max(worst, (merged[p + proj + ".weight"].double() - ref).abs().max().item())
    check(ok_shapes and len(adapter) == 3 * CFG["layers"] + 1, "ia3_l: k/v [out, 1], down_proj [1, d_ff], + head")
    check(moved_l, "the ia3 vectors trained away from ones")
    check(worst < 1e-6, f"ia3 merged: k/v rows and down_proj columns scaled by l (max error {worst:.2e})")

    # ---- 3. FISH --------------------------------------------------------------------------------------------
    ck, metrics = train(tmp, "fish", ["--config", "configs/fish.ini", "--fish.select", "magnitude"], steps=10)
    fish_dir = os.path.join(tmp, "fish")
    r = run(["export", ck, "--format", "merged", "--out", fish_dir])
    check(r.returncode == 0, "export --format merged (fish) exits 0: " + r.stderr.strip()[-300:])
    if r.returncode == 0:
        merged, _, _ = read_safetensors(os.path.join(fish_dir, "model.safetensors"))
        changed = sum(int((merged[n] != w).sum()) for n, w in W0.items())
        k = round(0.005 * sum(w.numel() for w in W0.values()))
        check(0 < changed <= k, f"fish merged changes {changed} entries, at most k = {k}")
    r = run(["eval", ck, "--json", os.path.join(tmp, "fish.json")], np=2)
    check(r.returncode == 0 and json.load(open(os.path.join(tmp, "fish.json")))["eval_accuracy"] ==
          eval_log(metrics)[10]["eval_accuracy"], "fish eval (np 2) == training log")
    r = run(["export", ck, "--format", "peft", "--out", os.path.join(tmp, "fish-peft")])
    check(r.returncode == 2 and "no HF PEFT adapter format" in r.stderr and len(r.stderr.strip().splitlines()) == 1,
          "export --format peft of fish: exit 2, one clear line: " + r.stderr.strip())

    # ---- 4. prompt tuning -----------------------------------------------------------------------------------
    ck, _ = train(tmp, "prompt", ["--config", "configs/prompt.ini"], steps=10)
    prompt_dir = os.path.join(tmp, "prompt")
    r = run(["export", ck, "--format", "peft", "--out", prompt_dir])
    check(r.returncode == 0, "export --format peft (prompt) exits 0: " + r.stderr.strip()[-300:])
    config = json.load(open(os.path.join(prompt_dir, "adapter_config.json")))
    adapter, _, _ = read_safetensors(os.path.join(prompt_dir, "adapter_model.safetensors"))
    check(config.get("peft_type") == "PROMPT_TUNING" and config.get("num_virtual_tokens") == 20 and
          config.get("token_dim") == CFG["dim"] and config.get("num_transformer_submodules") == 1,
          f"prompt config: {config}")
    check(set(adapter) == {"prompt_embeddings", "base_model.score.weight"} and
          list(adapter["prompt_embeddings"].shape) == [20, CFG["dim"]],
          f"prompt adapter keys/shapes: {[(k, list(v.shape)) for k, v in adapter.items()]}")
    r = run(["export", ck, "--format", "merged", "--out", prompt_dir])
    check(r.returncode == 2 and "'prompt' cannot be merged" in r.stderr, "merged prompt refused: " + r.stderr.strip())
finally:
    shutil.rmtree(tmp, ignore_errors=True)

finish()
