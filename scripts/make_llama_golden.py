#!/usr/bin/python3
"""Golden fixtures for deltatune's Llama backbone, llama2.c reader, tokenizer and sampler.

Run with Debian's python3-torch (torch 1.13), not a pyenv python:
    /usr/bin/python3 scripts/make_llama_golden.py
Writes tests/fixtures/llama/ (all small):
  tiny.safetensors            a seeded tiny Llama (GQA, untied head, score head), HF names and
                              HF's rotary layout, config in __metadata__ (HF config.json keys)
  tiny_expected.safetensors   inputs and the reference's LM logits, per-block hidden states, LM loss,
                              classification logits and loss
  stories260K_expected.safetensors
                              logits of data/stories260K for fixed ids, greedy continuations and a
                              seeded temperature/top-p sample, computed the way llama2.c's run.c does
                              (interleaved rotary pairs on the raw file weights, token by token)
  tokenizer_cases.json        run.c's encode() of a few strings with tok512.bin

Everything here is written from the published architecture with plain torch ops, independently of
the C++ code: the tiny model uses HF's conventions (rotate_half), stories260K uses Meta's/run.c's
(interleaved pairs), so agreement also checks the C++ loader's permutation between the two. The
safetensors writer is hand-written from the format description (no safetensors package).
"""
import json
import math
import os
import struct

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "llama")
STORIES = os.path.join(ROOT, "data", "stories260K")

DTYPES = {torch.float32: "F32", torch.int64: "I64"}


def write_safetensors(path, tensors, metadata=None):
    header = {}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        raw = t.numpy().tobytes()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)


# ---- HF-convention Llama (rotate_half), batched, with padding mask -----------------------------

def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def hf_forward(W, cfg, ids, mask):
    B, T = ids.shape
    H, KV, dim = cfg["heads"], cfg["kv_heads"], cfg["dim"]
    D = dim // H
    inv_freq = 1.0 / (cfg["theta"] ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    ang = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat((ang, ang), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    allowed = torch.tril(torch.ones(T, T, dtype=torch.bool))[None, None] & mask.bool()[:, None, None, :]
    x = W["model.embed_tokens.weight"][ids]
    hidden = []
    for i in range(cfg["layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, W[p + "input_layernorm.weight"], cfg["eps"])
        q = (h @ W[p + "self_attn.q_proj.weight"].T).view(B, T, H, D).transpose(1, 2)
        k = (h @ W[p + "self_attn.k_proj.weight"].T).view(B, T, KV, D).transpose(1, 2)
        v = (h @ W[p + "self_attn.v_proj.weight"].T).view(B, T, KV, D).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k[:, :, None].expand(B, KV, H // KV, T, D).reshape(B, H, T, D)
        v = v[:, :, None].expand(B, KV, H // KV, T, D).reshape(B, H, T, D)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        s = s.masked_fill(~allowed, torch.finfo(torch.float32).min)
        a = torch.softmax(s, dim=-1) @ v
        x = x + a.transpose(1, 2).reshape(B, T, dim) @ W[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, W[p + "post_attention_layernorm.weight"], cfg["eps"])
        g = h @ W[p + "mlp.gate_proj.weight"].T
        u = h @ W[p + "mlp.up_proj.weight"].T
        x = x + (g * torch.sigmoid(g) * u) @ W[p + "mlp.down_proj.weight"].T
        hidden.append(x)
    x = rms_norm(x, W["model.norm.weight"], cfg["eps"])
    return x, hidden


def make_tiny():
    cfg = dict(vocab=96, dim=32, hidden=88, layers=2, heads=4, kv_heads=2, seq=64, eps=1e-5,
               theta=10000.0, labels=3)
    g = torch.Generator().manual_seed(20240601)
    dim, hid, D = cfg["dim"], cfg["hidden"], cfg["dim"] // cfg["heads"]
    kv = cfg["kv_heads"] * D

    def normal(*shape, std=0.15):
        return torch.randn(*shape, generator=g) * std

    W = {"model.embed_tokens.weight": normal(cfg["vocab"], dim, std=0.5)}
    for i in range(cfg["layers"]):
        p = f"model.layers.{i}."
        W[p + "self_attn.q_proj.weight"] = normal(dim, dim)
        W[p + "self_attn.k_proj.weight"] = normal(kv, dim)
        W[p + "self_attn.v_proj.weight"] = normal(kv, dim)
        W[p + "self_attn.o_proj.weight"] = normal(dim, dim)
        W[p + "mlp.gate_proj.weight"] = normal(hid, dim)
        W[p + "mlp.up_proj.weight"] = normal(hid, dim)
        W[p + "mlp.down_proj.weight"] = normal(dim, hid)
        W[p + "input_layernorm.weight"] = 1.0 + normal(dim, std=0.1)
        W[p + "post_attention_layernorm.weight"] = 1.0 + normal(dim, std=0.1)
    W["model.norm.weight"] = 1.0 + normal(dim, std=0.1)
    W["lm_head.weight"] = normal(cfg["vocab"], dim, std=0.3)
    W["score.weight"] = normal(cfg["labels"], dim, std=0.3)
    meta = {"architecture": "llama", "vocab_size": str(cfg["vocab"]), "hidden_size": str(dim),
            "intermediate_size": str(hid), "num_hidden_layers": str(cfg["layers"]),
            "num_attention_heads": str(cfg["heads"]), "num_key_value_heads": str(cfg["kv_heads"]),
            "max_position_embeddings": str(cfg["seq"]), "rms_norm_eps": "1e-05",
            "rope_theta": "10000.0", "tie_word_embeddings": "false"}
    write_safetensors(os.path.join(OUT, "tiny.safetensors"), W, meta)

    ids = torch.randint(3, cfg["vocab"], (2, 9), generator=g)
    mask = torch.ones(2, 9, dtype=torch.int64)
    mask[1, 6:] = 0  # the second row is right-padded
    ids[1, 6:] = 0
    final, hidden = hf_forward(W, cfg, ids, mask)
    logits = final @ W["lm_head.weight"].T
    labels = ids.masked_fill(mask == 0, -100)
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, cfg["vocab"]), labels[:, 1:].reshape(-1), ignore_index=-100)
    last = mask.sum(1) - 1
    cls_logits = final[torch.arange(2), last] @ W["score.weight"].T
    cls_labels = torch.tensor([2, 0])
    cls_loss = torch.nn.functional.cross_entropy(cls_logits, cls_labels)
    expected = {"input_ids": ids, "attention_mask": mask, "labels": labels, "logits": logits,
                "loss": loss.reshape(()), "hidden_0": hidden[0], "hidden_1": hidden[1],
                "cls_logits": cls_logits, "cls_labels": cls_labels, "cls_loss": cls_loss.reshape(())}
    write_safetensors(os.path.join(OUT, "tiny_expected.safetensors"), expected)
    print(f"tiny: loss {loss.item():.6f}, cls_loss {cls_loss.item():.6f}")


# ---- llama2.c run.c, token by token, on the raw file weights ----------------------------------

def read_llama2c(path):
    raw = open(path, "rb").read()
    dim, hidden, layers, heads, kv_heads, vocab, seq = struct.unpack("<7i", raw[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    data = torch.from_numpy(np.frombuffer(raw[28:], dtype=np.float32).copy())
    D = dim // heads
    kv = kv_heads * D
    sizes = [("emb", (vocab, dim)), ("rms_att", (layers, dim)), ("wq", (layers, dim, dim)),
             ("wk", (layers, kv, dim)), ("wv", (layers, kv, dim)), ("wo", (layers, dim, dim)),
             ("rms_ffn", (layers, dim)), ("w1", (layers, hidden, dim)),
             ("w2", (layers, dim, hidden)), ("w3", (layers, hidden, dim)), ("rms_final", (dim,)),
             ("freq", (seq * D,))]
    if not shared:
        sizes.append(("wcls", (vocab, dim)))
    W, off = {}, 0
    for name, shape in sizes:
        n = int(np.prod(shape))
        W[name] = data[off:off + n].view(*shape)
        off += n
    assert off == data.numel(), "size mismatch"
    if shared:
        W["wcls"] = W["emb"]
    cfg = dict(dim=dim, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, vocab=vocab,
               seq=seq)
    return W, cfg


class RunC:
    """run.c's forward(): one token at a position, KV cache, interleaved rotary pairs."""

    def __init__(self, W, cfg):
        self.W, self.c = W, cfg
        D = cfg["dim"] // cfg["heads"]
        kv = cfg["kv_heads"] * D
        self.kc = torch.zeros(cfg["layers"], cfg["seq"], kv)
        self.vc = torch.zeros(cfg["layers"], cfg["seq"], kv)

    @staticmethod
    def rms(x, w):
        return w * (x * (1.0 / torch.sqrt((x * x).sum() / x.numel() + 1e-5)))

    def forward(self, token, pos):
        W, c = self.W, self.c
        dim, H, KV = c["dim"], c["heads"], c["kv_heads"]
        D = dim // H
        kv_dim = KV * D
        x = W["emb"][token].clone()
        for l in range(c["layers"]):
            xb = self.rms(x, W["rms_att"][l])
            q = W["wq"][l] @ xb
            k = W["wk"][l] @ xb
            v = W["wv"][l] @ xb
            for i in range(0, dim, 2):
                freq = 1.0 / (10000.0 ** ((i % D) / D))
                val = pos * freq
                fcr, fci = math.cos(val), math.sin(val)
                vecs = (q, k) if i < kv_dim else (q,)
                for vec in vecs:
                    v0, v1 = vec[i].item(), vec[i + 1].item()
                    vec[i] = v0 * fcr - v1 * fci
                    vec[i + 1] = v0 * fci + v1 * fcr
            self.kc[l, pos] = k
            self.vc[l, pos] = v
            out = torch.zeros(dim)
            for h in range(H):
                kh = h // (H // KV)
                qh = q[h * D:(h + 1) * D]
                keys = self.kc[l, :pos + 1, kh * D:(kh + 1) * D]
                att = torch.softmax(keys @ qh / math.sqrt(D), dim=0)
                out[h * D:(h + 1) * D] = att @ self.vc[l, :pos + 1, kh * D:(kh + 1) * D]
            x = x + W["wo"][l] @ out
            xb = self.rms(x, W["rms_ffn"][l])
            h1 = W["w1"][l] @ xb
            h3 = W["w3"][l] @ xb
            x = x + W["w2"][l] @ (h1 * torch.sigmoid(h1) * h3)
        x = self.rms(x, W["rms_final"])
        return W["wcls"] @ x


class Sampler:
    """run.c's sampler (xorshift64*, float32 softmax, top-p)."""

    def __init__(self, temperature, topp, seed):
        self.t, self.topp, self.state = np.float32(temperature), np.float32(topp), seed

    def u32(self):
        s = self.state
        s ^= s >> 12
        s ^= (s << 25) & 0xFFFFFFFFFFFFFFFF
        s ^= s >> 27
        self.state = s
        return ((s * 0x2545F4914F6CDD1D) & 0xFFFFFFFFFFFFFFFF) >> 32

    def f32(self):
        return np.float32(self.u32() >> 8) / np.float32(16777216.0)

    def sample(self, logits):
        l = logits.numpy().astype(np.float32)
        if self.t == 0:
            return int(np.argmax(l))
        p = [np.float32(v) / self.t for v in l]
        m = max(p)
        total = np.float32(0)
        for i in range(len(p)):
            p[i] = np.float32(np.exp(np.float32(p[i] - m)))
            total = np.float32(total + p[i])
        p = [np.float32(v / total) for v in p]
        coin = self.f32()
        n = len(p)
        if self.topp <= 0 or self.topp >= 1:  # run.c's sample_mult
            cdf = np.float32(0)
            for i in range(n):
                cdf = np.float32(cdf + p[i])
                if coin < cdf:
                    return i
            return n - 1
        cutoff = np.float32((np.float32(1) - self.topp) / np.float32(n - 1))
        cand = sorted([(p[i], i) for i in range(n) if p[i] >= cutoff], key=lambda c: -c[0])
        cum = np.float32(0)
        last = len(cand) - 1
        for i, (pr, _) in enumerate(cand):
            cum = np.float32(cum + pr)
            if cum > self.topp:
                last = i
                break
        r = np.float32(coin * cum)
        cdf = np.float32(0)
        for i in range(last + 1):
            cdf = np.float32(cdf + cand[i][0])
            if r < cdf:
                return cand[i][1]
        return cand[last][1]


def run_generate(W, cfg, prompt, steps, sampler):
    """run.c's generate loop; returns the tokens after the first (stops at BOS)."""
    m = RunC(W, cfg)
    out, token = [], prompt[0]
    for pos in range(steps):
        logits = m.forward(token, pos)
        nxt = prompt[pos + 1] if pos + 1 < len(prompt) else sampler.sample(logits)
        if nxt == 1:
            break
        out.append(nxt)
        token = nxt
    return out


def read_tokenizer(path):
    raw = open(path, "rb").read()
    off, vocab, scores = 4, [], []
    while off < len(raw):
        s, n = struct.unpack("<fi", raw[off:off + 8])
        off += 8
        vocab.append(raw[off:off + n])
        scores.append(s)
        off += n
    return vocab, scores


def runc_encode(vocab, scores, text):
    """run.c's encode(text, bos=0, eos=0)."""
    index = {}
    for i, v in enumerate(vocab):
        index.setdefault(v, i)
    b = text.encode("utf-8")
    tokens = []
    if b:
        tokens.append(index[b" "])
    buf = b""
    for i, c in enumerate(b):
        if c & 0xC0 != 0x80:
            buf = b""
        buf += bytes([c])
        if i + 1 < len(b) and (b[i + 1] & 0xC0) == 0x80 and len(buf) < 4:
            continue
        if buf in index:
            tokens.append(index[buf])
        else:
            tokens.extend(x + 3 for x in buf)
        buf = b""
    while True:
        best, best_id, best_idx = -1e10, -1, -1
        for i in range(len(tokens) - 1):
            j = index.get(vocab[tokens[i]] + vocab[tokens[i + 1]], -1)
            if j != -1 and scores[j] > best:
                best, best_id, best_idx = scores[j], j, i
        if best_idx == -1:
            break
        tokens[best_idx] = best_id
        del tokens[best_idx + 1]
    return tokens


def make_stories():
    W, cfg = read_llama2c(os.path.join(STORIES, "stories260K.bin"))
    vocab, scores = read_tokenizer(os.path.join(STORIES, "tok512.bin"))
    texts = ["Once upon a time", "Hello world!", "Lily and Tom went to the park.",
             "a  b\tc\nd", "caf\u00e9 na\u00efve \u4f60\u597d \U0001F600", ""]
    cases = [{"text": t, "ids": runc_encode(vocab, scores, t)} for t in texts]
    with open(os.path.join(OUT, "tokenizer_cases.json"), "w") as f:
        json.dump(cases, f, indent=1, ensure_ascii=False)
        f.write("\n")

    prompt = [1] + cases[0]["ids"]
    m = RunC(W, cfg)
    logits = torch.stack([m.forward(t, pos) for pos, t in enumerate(prompt)])
    greedy_bos = run_generate(W, cfg, [1], 80, Sampler(0.0, 0.9, 1))
    greedy_prompt = run_generate(W, cfg, prompt, 60, Sampler(0.0, 0.9, 1))
    sampled = run_generate(W, cfg, [1], 60, Sampler(1.0, 0.9, 42))
    sampled_mult = run_generate(W, cfg, [1], 40, Sampler(0.8, 1.0, 7))
    t = lambda xs: torch.tensor(xs, dtype=torch.int64)
    write_safetensors(os.path.join(OUT, "stories260K_expected.safetensors"), {
        "prompt_ids": t(prompt), "prompt_logits": logits, "greedy_bos": t(greedy_bos),
        "greedy_prompt": t(greedy_prompt), "sample_t1_p09_seed42": t(sampled),
        "sample_t08_p1_seed7": t(sampled_mult)})
    dec = lambda ids: b"".join(vocab[i] for i in ids).decode("utf-8", "replace")
    print("stories260K greedy from BOS:", repr(dec(greedy_bos)[:120]))


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    make_tiny()
    make_stories()
