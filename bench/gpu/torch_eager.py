#!/usr/bin/env python3
"""bench/gpu/torch_eager.py — the PyTorch-eager side of bench/gpu/run.py: what a user would run instead.

One process per model (run.py starts it); per method: build the model on the device, 3 untimed steps,
then 10 timed ones (median reported), and the peak of torch.cuda.max_memory_allocated from before the
model was built (weights, gradients, optimizer state, activations). A step is what deltatune's
step_time_s covers: zero_grad, forward + loss, backward, (FISH) the mask, global-norm clip 1.0, AdamW
(weight decay 0, torch's default foreach implementation), synchronized on the GPU.
  * stories260K: HF LlamaForSequenceClassification (dim 64, 5 layers, 8 heads, 4 kv heads, vocab 512,
    hidden 172: the 7-int header of data/stories260K/stories260K.bin) with the file's weights (run.c's
    interleaved rotary rows permuted to HF's halves, as HF's convert_llama_weights_to_hf does), a new
    2-way `score` head; loss = cross-entropy of the 2 class logits.
  * t5-base, t5-3b: HF T5ForConditionalGeneration, random init (HF's own) from a hand-built T5Config
    (no hub access); classification the T5 way, as deltatune's T5 does it: the decoder runs one step from
    the start token and the loss is the cross-entropy over the vocabulary on the label word's first token.
  * full: every weight trains; lora: HF PEFT, r 8, alpha 16, q and v, dropout 0 (Llama: its score head
    trains too, task SEQ_CLS); fish: as FISH's code does it: every weight keeps requires_grad, the dense
    gradients are multiplied by a 0/1 mask of 0.5% of each tensor (in the weights' dtype) after the
    backward, and AdamW runs over every weight (its state for all of them); the mask here is random (the
    Fisher's choice of indices changes nothing in the cost); houlsby: PEFT has no bottleneck adapter, so
    h + up(relu(down(h))) (m 64) after every self-attention's output projection and every FFN (not the
    cross-attention), as peft/houlsby places them; lst: no eager equivalent here (null, with a note).
Inputs are random token ids, every row full length (no padding): deltatune runs with --train.pad-to.

  python3 bench/gpu/torch_eager.py --model t5-base --methods full,lora --out /tmp/t.json   (GPU)
  python3 bench/gpu/torch_eager.py --device cpu --quick                                   (CPU smoke test)
--quick: tiny shapes (batch 2, 16 tokens, a 2-layer T5 of width 32), 1 + 2 steps.
"""
import argparse
import gc
import importlib.util
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import table as T  # noqa: E402

ROOT = T.C.ROOT
LABEL_WORDS = [2841, 1465]  # first tokens of "negative", "positive" in t5-spiece (SST-2's label words)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def golden():
    """scripts/make_llama_golden.py (the llama2.c reader), loaded as bench/py_ddp.py does."""
    spec = importlib.util.spec_from_file_location("golden", os.path.join(ROOT, "scripts", "make_llama_golden.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---- models --------------------------------------------------------------------------------------

def on_device(make, dtype, device):
    """Build (and HF-initialize) the model directly on the device in dtype: no fp32 copy on the host."""
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return make()
    finally:
        torch.set_default_dtype(prev)


def stories260K(dtype, device):
    from transformers import LlamaConfig, LlamaForSequenceClassification
    W, c = golden().read_llama2c(os.path.join(ROOT, T.C.STORIES))
    cfg = LlamaConfig(vocab_size=c["vocab"], hidden_size=c["dim"], intermediate_size=c["hidden"],
                      num_hidden_layers=c["layers"], num_attention_heads=c["heads"],
                      num_key_value_heads=c["kv_heads"], max_position_embeddings=c["seq"], rms_norm_eps=1e-5,
                      rope_theta=10000.0, num_labels=2, pad_token_id=0, tie_word_embeddings=False)
    model = on_device(lambda: LlamaForSequenceClassification(cfg), dtype, device)

    def permute(w, heads):  # run.c's interleaved rotary pairs -> HF's rotate_half halves
        return w.view(heads, w.shape[0] // heads // 2, 2, w.shape[1]).transpose(1, 2).reshape(w.shape)
    sd = {"model.embed_tokens.weight": W["emb"], "model.norm.weight": W["rms_final"]}
    for l in range(c["layers"]):
        p = f"model.layers.{l}."
        sd.update({p + "self_attn.q_proj.weight": permute(W["wq"][l], c["heads"]),
                   p + "self_attn.k_proj.weight": permute(W["wk"][l], c["kv_heads"]),
                   p + "self_attn.v_proj.weight": W["wv"][l], p + "self_attn.o_proj.weight": W["wo"][l],
                   p + "mlp.gate_proj.weight": W["w1"][l], p + "mlp.down_proj.weight": W["w2"][l],
                   p + "mlp.up_proj.weight": W["w3"][l], p + "input_layernorm.weight": W["rms_att"][l],
                   p + "post_attention_layernorm.weight": W["rms_ffn"][l]})
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert missing == ["score.weight"] and not unexpected, (missing, unexpected)
    return model, dict(targets=["q_proj", "v_proj"], task="SEQ_CLS", vocab=c["vocab"])


T5_SHAPES = {  # d_model, d_ff, d_kv, heads, layers (T5 v1.0: ReLU FFN, tied embeddings, vocab 32128)
    "t5-base": (768, 3072, 64, 12, 12),
    "t5-3b": (1024, 16384, 128, 32, 24),
    "quick": (32, 64, 8, 4, 2),
}


def t5(shape, dtype, device):
    from transformers import T5Config, T5ForConditionalGeneration
    d, ff, dkv, H, L = T5_SHAPES[shape]
    cfg = T5Config(vocab_size=32128, d_model=d, d_ff=ff, d_kv=dkv, num_heads=H, num_layers=L,
                   num_decoder_layers=L, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                   dropout_rate=0.1, layer_norm_epsilon=1e-6, feed_forward_proj="relu", tie_word_embeddings=True,
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, use_cache=False)
    model = on_device(lambda: T5ForConditionalGeneration(cfg), dtype, device)
    return model, dict(targets=["q", "v"], task="SEQ_2_SEQ_LM", vocab=32128)


class Bottleneck(nn.Module):
    """Houlsby's adapter: h + up(relu(down(h))), near-identity (up = 0) as peft/houlsby initializes it."""

    def __init__(self, d, m):
        super().__init__()
        self.down, self.up = nn.Linear(d, m), nn.Linear(m, d)
        nn.init.trunc_normal_(self.down.weight, std=1e-2, a=-2e-2, b=2e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h):
        return h + self.up(F.relu(self.down(h)))


def add_houlsby(model, m):
    """Adapters after every self-attention's output projection and every FFN's output (T5 names)."""
    adapters = nn.ModuleList()
    for name, mod in model.named_modules():
        if name.endswith(("SelfAttention.o", "DenseReluDense.wo")):
            a = Bottleneck(mod.out_features, m).to(mod.weight.device, mod.weight.dtype)
            mod.register_forward_hook(lambda _m, _i, out, a=a: a(out))
            adapters.append(a)
    model.houlsby = adapters  # registered, so .parameters() and the memory count see them
    return adapters


# ---- one method ----------------------------------------------------------------------------------

def measure(model_name, method, batch, seq, dtype, device, warmup, steps, quick):
    torch.manual_seed(0)
    build = (lambda: stories260K(dtype, device)) if model_name == "stories260K" else (
        lambda: t5("quick" if quick else model_name, dtype, device))
    model, info = build()
    model.train()
    notes = []
    masks = None
    if method == "full":
        trainable = list(model.parameters())
    elif method == "lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=T.LORA_R, lora_alpha=T.LORA_ALPHA, lora_dropout=0.0,
                                                 target_modules=info["targets"], task_type=info["task"]))
        trainable = [p for p in model.parameters() if p.requires_grad]
    elif method == "fish":
        trainable = list(model.parameters())
        g = torch.Generator(device=device).manual_seed(0)
        # The task head (Llama's score) trains whole, as in FISH's code and ours.
        masks = [((torch.rand(p.shape, generator=g, device=device) < T.KEEP).to(p.dtype), p)
                 for n, p in model.named_parameters() if not n.startswith("score")]
        notes.append("mask: random 0.5% of each tensor (same count as the Fisher's), dense grads x mask")
    elif method == "houlsby":
        for p in model.parameters():
            p.requires_grad_(False)
        trainable = list(add_houlsby(model, T.HOULSBY_M).parameters())
        notes.append(f"houlsby: own bottleneck adapters (PEFT has none), m {T.HOULSBY_M}")
    else:
        raise ValueError(method)
    opt = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.0)

    # A fixed batch of random ids on the device: the data loader is not what is compared.
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, info["vocab"], (batch, seq), generator=g).to(device)
    mask = torch.ones_like(ids)
    if model_name == "stories260K":
        labels = torch.randint(0, 2, (batch,), generator=g).to(device)
        inputs = dict(input_ids=ids, attention_mask=mask, labels=labels)
    else:  # the decoder's one step: the start token in, the label word's first token as the target
        words = torch.tensor(LABEL_WORDS)[torch.randint(0, 2, (batch,), generator=g)]
        inputs = dict(input_ids=ids, attention_mask=mask, decoder_input_ids=torch.zeros(batch, 1, dtype=torch.long,
                      device=device), labels=words[:, None].to(device))

    cuda = device.startswith("cuda")
    times = []
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(**inputs).loss
        loss.backward()
        if masks is not None:
            for m, p in masks:
                p.grad.mul_(m)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    if not math.isfinite(loss.item()):
        notes.append(f"loss not finite: {loss.item()}")
    row = dict(torch_ms=1000 * statistics.median(times), torch_ms_all=[round(1000 * t, 3) for t in times],
               torch_peak_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
               torch_trainable=sum(p.numel() for p in trainable),
               torch_params=sum(p.numel() for p in model.parameters()), torch_loss=loss.item(),
               torch_notes="; ".join(notes))
    del model, opt, trainable, masks, inputs, loss
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="all", help="stories260K | t5-base | t5-3b | all")
    ap.add_argument("--methods", default="", help="comma-separated (default: the model's methods in table.py)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny shapes and 1 + 2 steps (a CPU smoke test)")
    ap.add_argument("--out", help="JSON list of rows, rewritten after each row (default: print only)")
    a = ap.parse_args()
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("torch_eager.py: --device cuda but torch sees no GPU")
    warmup, steps = (1, 2) if a.quick else (T.WARMUP, T.STEPS)
    names = list(T.MODELS) if a.model == "all" else [a.model]
    rows = []
    for name in names:
        spec = T.MODELS[name]
        batch, seq = (2, 16) if a.quick else (spec["batch"], spec["seq"])
        for method in (a.methods.split(",") if a.methods else spec["methods"]):
            row = dict(model=name, method=method, batch=batch, seq=seq, dtype=spec["dtype"], device=a.device,
                       torch_version=torch.__version__)
            if a.device.startswith("cuda"):
                row["gpu"] = torch.cuda.get_device_name()
            if method == "lst":
                row.update(torch_ms=None, torch_peak_gib=None,
                           torch_notes="no PyTorch-eager LST here: Ladder Side Tuning (Sung et al. 2022) is a "
                                       "pruned side network fed by the frozen backbone's layers; no PEFT method "
                                       "implements it")
            else:
                if a.device.startswith("cuda"):
                    gc.collect()
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.time()
                try:
                    row.update(measure(name, method, batch, seq, DTYPES[spec["dtype"]], a.device, warmup, steps,
                                       a.quick))
                except Exception as e:  # one failed row (say, out of memory) must not lose the others
                    row.update(torch_ms=None, torch_peak_gib=None, torch_error=f"{type(e).__name__}: {e}"[:500])
                row["torch_wall_s"] = round(time.time() - t0, 1)
            rows.append(row)
            print(f"[torch_eager] {name} {method}: "
                  + (f"{row['torch_ms']:.1f} ms/step" if row.get("torch_ms") is not None else "–")
                  + (f", peak {row['torch_peak_gib']:.2f} GiB" if row.get("torch_peak_gib") is not None else "")
                  + (f"  ERROR {row['torch_error']}" if "torch_error" in row else ""), flush=True)
            if a.out:
                with open(a.out, "w") as f:
                    json.dump(rows, f, indent=1)
                    f.write("\n")


if __name__ == "__main__":
    main()
