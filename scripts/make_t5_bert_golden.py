#!/usr/bin/python3
"""Golden outputs of tiny T5 v1.0, T5 v1.1 and BERT for tests/model/test_t5_golden.cpp.

An independent reference: written from the published architectures (Raffel et al. 2020 and HF's
modeling_t5; Devlin et al. 2019 and HF's modeling_bert) with plain torch ops in float64, sharing no
code with model/t5.cpp or model/bert.cpp. Runs with Debian's torch 1.13 (`/usr/bin/python3`); needs
no transformers. Writes safetensors by hand (8-byte little-endian header length, JSON header, raw
little-endian bytes), because torch.save files cannot be read from C++.

    /usr/bin/python3 scripts/make_t5_bert_golden.py     # rewrites tests/fixtures/{t5,bert}/

Per model two files: <name>.safetensors holds the weights under HF names (what a checkpoint holds)
and the HF config.json keys in its __metadata__ (so model::load_backbone can read it),
<name>.golden.safetensors holds the inputs and the expected outputs.
"""
import json
import math
import os
import struct

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Must equal the tiny configs of model/config.cpp (the C++ test checks every shape on load).
TINY_T5 = dict(vocab=64, d_model=16, d_ff=32, d_kv=4, heads=4, layers=2, dec_layers=2, buckets=8,
               max_distance=16, gated=False, tied=True, eps=1e-6)
TINY_T5_V1_1 = dict(vocab=64, d_model=16, d_ff=24, d_kv=4, heads=4, layers=2, dec_layers=3, buckets=8,
                    max_distance=16, gated=True, tied=False, eps=1e-6)
TINY_BERT = dict(vocab=64, d_model=16, d_ff=32, heads=4, layers=2, positions=32, types=2, eps=1e-12)

DTYPES = {torch.float32: "F32", torch.int64: "I64"}


def write_safetensors(path, tensors, metadata=None):
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    for name, t in tensors.items():
        t = t.contiguous()
        data = t.numpy().tobytes()  # x86: little-endian
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


# ---- T5 ----------------------------------------------------------------------------------------
def t5_weights(c, gen):
    """HF names in HF order; random layer norms so that a skipped norm weight shows."""
    w = {}
    d, inner = c["d_model"], c["heads"] * c["d_kv"]

    def randn(*shape, std=1.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * std

    def norm(name):
        w[name] = 1.0 + 0.2 * randn(d)

    def attention(p, bias):
        w[p + ".q.weight"] = randn(inner, d, std=(d * c["d_kv"]) ** -0.5)
        w[p + ".k.weight"] = randn(inner, d, std=d ** -0.5)
        w[p + ".v.weight"] = randn(inner, d, std=d ** -0.5)
        w[p + ".o.weight"] = randn(d, inner, std=inner ** -0.5)
        if bias:
            w[p + ".relative_attention_bias.weight"] = randn(c["buckets"], c["heads"], std=1.0)

    def ffn(p):
        if c["gated"]:
            w[p + ".DenseReluDense.wi_0.weight"] = randn(c["d_ff"], d, std=d ** -0.5)
            w[p + ".DenseReluDense.wi_1.weight"] = randn(c["d_ff"], d, std=d ** -0.5)
        else:
            w[p + ".DenseReluDense.wi.weight"] = randn(c["d_ff"], d, std=d ** -0.5)
        w[p + ".DenseReluDense.wo.weight"] = randn(d, c["d_ff"], std=c["d_ff"] ** -0.5)
        norm(p + ".layer_norm.weight")

    w["shared.weight"] = randn(c["vocab"], d)
    for i in range(c["layers"]):
        b = "encoder.block.%d" % i
        attention(b + ".layer.0.SelfAttention", i == 0)
        norm(b + ".layer.0.layer_norm.weight")
        ffn(b + ".layer.1")
    norm("encoder.final_layer_norm.weight")
    for i in range(c["dec_layers"]):
        b = "decoder.block.%d" % i
        attention(b + ".layer.0.SelfAttention", i == 0)
        norm(b + ".layer.0.layer_norm.weight")
        attention(b + ".layer.1.EncDecAttention", False)
        norm(b + ".layer.1.layer_norm.weight")
        ffn(b + ".layer.2")
    norm("decoder.final_layer_norm.weight")
    if not c["tied"]:
        w["lm_head.weight"] = randn(c["vocab"], d, std=d ** -0.5)
    return w


def t5_bucket(q_len, k_len, bidirectional, num_buckets, max_distance):
    """T5's bucketing of relative positions (memory - query), as published (float32 log, as HF)."""
    rel = torch.arange(k_len)[None, :] - torch.arange(q_len)[:, None]
    out = torch.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        out += (rel > 0).long() * num_buckets
        n = rel.abs()
    else:
        n = torch.clamp(-rel, min=0)
    max_exact = num_buckets // 2
    far = max_exact + (torch.log(n.float() / max_exact) / math.log(max_distance / max_exact)
                       * (num_buckets - max_exact)).long()
    far = torch.clamp(far, max=num_buckets - 1)
    return out + torch.where(n < max_exact, n, far)


def rms(x, weight, eps):
    return weight * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def mha(x, kv, w, p, c, bias, key_keep):
    """Multi-head attention without 1/sqrt(d) scaling; bias [H, q, k] or None; key_keep [B, k] bool."""
    B, Tq, _ = x.shape
    Tk = kv.shape[1]
    H, D = c["heads"], c["d_kv"]
    q = (x @ w[p + ".q.weight"].T).reshape(B, Tq, H, D).permute(0, 2, 1, 3)
    k = (kv @ w[p + ".k.weight"].T).reshape(B, Tk, H, D).permute(0, 2, 1, 3)
    v = (kv @ w[p + ".v.weight"].T).reshape(B, Tk, H, D).permute(0, 2, 1, 3)
    s = torch.einsum("bhqd,bhkd->bhqk", q, k)
    if bias is not None:
        s = s + bias[None]
    s = s.masked_fill(~key_keep[:, None, :, :], float("-inf"))
    a = torch.softmax(s, dim=-1)
    ctx = torch.einsum("bhqk,bhkd->bqhd", a, v).reshape(B, Tq, H * D)
    return ctx @ w[p + ".o.weight"].T


def t5_ffn(x, w, p, c):
    if c["gated"]:
        g = x @ w[p + ".wi_0.weight"].T
        gelu_new = 0.5 * g * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (g + 0.044715 * g ** 3)))
        h = gelu_new * (x @ w[p + ".wi_1.weight"].T)
    else:
        h = torch.clamp(x @ w[p + ".wi.weight"].T, min=0.0)
    return h @ w[p + ".wo.weight"].T


def t5_forward(c, w, ids, mask, dec_ids):
    B, T = ids.shape
    Td = dec_ids.shape[1]
    eps = c["eps"]
    enc_keep = (mask != 0)[:, None, :].expand(B, T, T)
    enc_bias = w["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"][
        t5_bucket(T, T, True, c["buckets"], c["max_distance"])].permute(2, 0, 1)
    h = w["shared.weight"][ids]
    enc_hidden = []
    for i in range(c["layers"]):
        b = "encoder.block.%d" % i
        n = rms(h, w[b + ".layer.0.layer_norm.weight"], eps)
        h = h + mha(n, n, w, b + ".layer.0.SelfAttention", c, enc_bias, enc_keep)
        n = rms(h, w[b + ".layer.1.layer_norm.weight"], eps)
        h = h + t5_ffn(n, w, b + ".layer.1.DenseReluDense", c)
        enc_hidden.append(h)
    enc = rms(h, w["encoder.final_layer_norm.weight"], eps)

    causal = torch.tril(torch.ones(Td, Td, dtype=torch.bool))[None].expand(B, Td, Td)
    cross_keep = (mask != 0)[:, None, :].expand(B, Td, T)
    dec_bias = w["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"][
        t5_bucket(Td, Td, False, c["buckets"], c["max_distance"])].permute(2, 0, 1)
    h = w["shared.weight"][dec_ids]
    dec_hidden = []
    for i in range(c["dec_layers"]):
        b = "decoder.block.%d" % i
        n = rms(h, w[b + ".layer.0.layer_norm.weight"], eps)
        h = h + mha(n, n, w, b + ".layer.0.SelfAttention", c, dec_bias, causal)
        n = rms(h, w[b + ".layer.1.layer_norm.weight"], eps)
        h = h + mha(n, enc, w, b + ".layer.1.EncDecAttention", c, None, cross_keep)
        n = rms(h, w[b + ".layer.2.layer_norm.weight"], eps)
        h = h + t5_ffn(n, w, b + ".layer.2.DenseReluDense", c)
        dec_hidden.append(h)
    h = rms(h, w["decoder.final_layer_norm.weight"], eps)
    if c["tied"]:
        logits = (h * c["d_model"] ** -0.5) @ w["shared.weight"].T
    else:
        logits = h @ w["lm_head.weight"].T
    return enc, enc_hidden, dec_hidden, logits


def make_t5(name, c, seed):
    gen = torch.Generator().manual_seed(seed)
    w = t5_weights(c, gen)
    B, T, Td = 2, 10, 6
    ids = torch.randint(2, c["vocab"], (B, T), generator=gen)
    mask = torch.ones(B, T, dtype=torch.int64)
    mask[1, 7:] = 0
    ids[1, 7:] = 0
    labels = torch.randint(2, c["vocab"], (B, Td), generator=gen)
    labels[1, 4:] = -100  # ignored targets
    dec_ids = torch.zeros_like(labels)  # shift right, decoder_start = pad = 0
    dec_ids[:, 1:] = labels[:, :-1]
    dec_ids[dec_ids == -100] = 0
    enc, enc_hidden, dec_hidden, logits = t5_forward(c, w, ids, mask, dec_ids)
    keep = labels != -100
    logp = torch.log_softmax(logits, -1)
    loss = -logp[keep].gather(1, labels[keep][:, None]).mean()
    # Classification with a pooled head: mean of the encoder output over real tokens.
    cls_w = torch.randn(3, c["d_model"], generator=gen, dtype=torch.float64) * 0.3
    cls_b = torch.randn(3, generator=gen, dtype=torch.float64) * 0.1
    pooled = (enc * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True)
    cls_logits = pooled @ cls_w.T + cls_b

    f32 = lambda t: t.to(torch.float32)
    out_dir = os.path.join(ROOT, "tests", "fixtures", "t5")
    os.makedirs(out_dir, exist_ok=True)
    hf_config = {"architecture": "t5", "vocab_size": c["vocab"], "d_model": c["d_model"], "d_ff": c["d_ff"],
                 "d_kv": c["d_kv"], "num_heads": c["heads"], "num_layers": c["layers"],
                 "num_decoder_layers": c["dec_layers"], "relative_attention_num_buckets": c["buckets"],
                 "relative_attention_max_distance": c["max_distance"], "layer_norm_epsilon": c["eps"],
                 "feed_forward_proj": "gated-gelu" if c["gated"] else "relu",
                 "tie_word_embeddings": "true" if c["tied"] else "false"}
    write_safetensors(os.path.join(out_dir, name + ".safetensors"), {k: f32(v) for k, v in w.items()}, hf_config)
    golden = {"input_ids": ids, "attention_mask": mask, "labels": labels, "logits": f32(logits),
              "loss": f32(loss.reshape([])), "head.classifier.weight": f32(cls_w),
              "head.classifier.bias": f32(cls_b), "head.logits": f32(cls_logits)}
    for i, h in enumerate(enc_hidden):
        golden["encoder.hidden.%d" % i] = f32(h)
    for i, h in enumerate(dec_hidden):
        golden["decoder.hidden.%d" % i] = f32(h)
    write_safetensors(os.path.join(out_dir, name + ".golden.safetensors"), golden)


# ---- BERT --------------------------------------------------------------------------------------
def layer_norm(x, weight, bias, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


def make_bert(name, c, seed):
    gen = torch.Generator().manual_seed(seed)
    d, H = c["d_model"], c["heads"]
    D = d // H
    w = {}

    def randn(*shape, std=0.02):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * std

    def linear(p, n_in, n_out):
        w[p + ".weight"] = randn(n_out, n_in, std=n_in ** -0.5)
        w[p + ".bias"] = randn(n_out, std=0.1)

    def ln(p):
        w[p + ".weight"] = 1.0 + randn(d, std=0.2)
        w[p + ".bias"] = randn(d, std=0.1)

    w["embeddings.word_embeddings.weight"] = randn(c["vocab"], d, std=1.0)
    w["embeddings.position_embeddings.weight"] = randn(c["positions"], d, std=0.5)
    w["embeddings.token_type_embeddings.weight"] = randn(c["types"], d, std=0.5)
    ln("embeddings.LayerNorm")
    for i in range(c["layers"]):
        p = "encoder.layer.%d" % i
        linear(p + ".attention.self.query", d, d)
        linear(p + ".attention.self.key", d, d)
        linear(p + ".attention.self.value", d, d)
        linear(p + ".attention.output.dense", d, d)
        ln(p + ".attention.output.LayerNorm")
        linear(p + ".intermediate.dense", d, c["d_ff"])
        linear(p + ".output.dense", c["d_ff"], d)
        ln(p + ".output.LayerNorm")
    linear("pooler.dense", d, d)
    linear("classifier", d, 3)  # BertForSequenceClassification head, 3 labels

    B, T = 3, 9
    ids = torch.randint(1, c["vocab"], (B, T), generator=gen)
    mask = torch.ones(B, T, dtype=torch.int64)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    labels = torch.tensor([2, 0, 1])

    lin = lambda x, p: x @ w[p + ".weight"].T + w[p + ".bias"]
    eps = c["eps"]

    def forward(types):
        h = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:T][None]
             + w["embeddings.token_type_embeddings.weight"][types])
        h = layer_norm(h, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        hidden = []
        for i in range(c["layers"]):
            p = "encoder.layer.%d" % i
            split = lambda t: t.reshape(B, T, H, D).permute(0, 2, 1, 3)
            q = split(lin(h, p + ".attention.self.query"))
            k = split(lin(h, p + ".attention.self.key"))
            v = split(lin(h, p + ".attention.self.value"))
            s = q @ k.transpose(-1, -2) / math.sqrt(D)
            s = s.masked_fill((mask == 0)[:, None, None, :], float("-inf"))
            ctx = (torch.softmax(s, -1) @ v).permute(0, 2, 1, 3).reshape(B, T, d)
            a = lin(ctx, p + ".attention.output.dense")
            h = layer_norm(h + a, w[p + ".attention.output.LayerNorm.weight"],
                           w[p + ".attention.output.LayerNorm.bias"], eps)
            f = lin(h, p + ".intermediate.dense")
            f = 0.5 * f * (1.0 + torch.erf(f / math.sqrt(2.0)))
            f = lin(f, p + ".output.dense")
            h = layer_norm(h + f, w[p + ".output.LayerNorm.weight"], w[p + ".output.LayerNorm.bias"], eps)
            hidden.append(h)
        pooled = torch.tanh(lin(h[:, 0], "pooler.dense"))
        logits = lin(pooled, "classifier")
        loss = -torch.log_softmax(logits, -1).gather(1, labels[:, None]).mean()
        return hidden, pooled, logits, loss

    hidden, pooled, logits, loss = forward(torch.zeros_like(ids))
    # A sentence pair (RTE with BERT): segment B (type 1) from position 4 to each row's end.
    types = torch.zeros_like(ids)
    types[:, 4:] = 1
    types[mask == 0] = 0
    _, _, pair_logits, pair_loss = forward(types)

    f32 = lambda t: t.to(torch.float32)
    out_dir = os.path.join(ROOT, "tests", "fixtures", "bert")
    os.makedirs(out_dir, exist_ok=True)
    hf_config = {"architecture": "bert", "vocab_size": c["vocab"], "hidden_size": d, "intermediate_size": c["d_ff"],
                 "num_attention_heads": H, "num_hidden_layers": c["layers"], "max_position_embeddings": c["positions"],
                 "type_vocab_size": c["types"], "hidden_act": "gelu", "layer_norm_eps": c["eps"]}
    write_safetensors(os.path.join(out_dir, name + ".safetensors"), {k: f32(v) for k, v in w.items()}, hf_config)
    golden = {"input_ids": ids, "attention_mask": mask, "labels": labels, "pooled": f32(pooled),
              "logits": f32(logits), "loss": f32(loss.reshape([])), "token_type_ids": types,
              "pair.logits": f32(pair_logits), "pair.loss": f32(pair_loss.reshape([]))}
    for i, t in enumerate(hidden):
        golden["encoder.hidden.%d" % i] = f32(t)
    write_safetensors(os.path.join(out_dir, name + ".golden.safetensors"), golden)


if __name__ == "__main__":
    make_t5("tiny-t5", TINY_T5, seed=1234)
    make_t5("tiny-t5-v1_1", TINY_T5_V1_1, seed=5678)
    make_bert("tiny-bert", TINY_BERT, seed=91011)
    print("wrote tests/fixtures/t5/{tiny-t5,tiny-t5-v1_1}*.safetensors, tests/fixtures/bert/tiny-bert*.safetensors")
