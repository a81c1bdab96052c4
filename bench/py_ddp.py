#!/usr/bin/env python3
"""bench/py_ddp.py — the Python baseline: PyTorch DistributedDataParallel over gloo, one rank per process.

Launch (2 ranks, like ours):  mpirun -np 2 --bind-to core .venv/bin/python bench/py_ddp.py --method lora ...
(rank and size from Open MPI's environment; torchrun is broken on this machine).

Same model, data and hyper-parameters as `deltatune train --config configs/<method>.ini`
(--model stories260K) or `configs/minilm-<method>.ini` (--model models/all-minilm-l6-v2):
  * stories260K from data/stories260K/stories260K.bin, read and run the way llama2.c's run.c does
    (interleaved rotary pairs on the raw weights; reader reused from scripts/make_llama_golden.py), a
    `score` head (2 x 64, N(0, 0.02)) on the last non-padding position (HF LlamaForSequenceClassification);
  * SST-2 train split, llama2.c BPE (tok512.bin, run.c's encode), BOS + text, at most 64 tokens,
    right-padded to the longest row of the batch; 16 examples per rank per step, shuffled by seed;
  * AdamW (weight decay 0), linear warm-up then linear decay, global-norm clip 1.0; torch threads 1
    per rank (our binary's default with 2 ranks on 2 cores).
  * --model DIR (an HF BERT directory: the real all-MiniLM-L6-v2): transformers' BertForSequenceClassification
    (its dropout 0.1 on, as ours), BertTokenizer's [CLS] text [SEP] at most --max-len tokens; LoRA is HF PEFT's
    get_peft_model(LoraConfig(r, alpha, target_modules query/value, task SEQ_CLS)): the stack our users replace.
Methods, as their papers' code does them:
  * full: every weight trains, DDP all-reduces every gradient;
  * lora: B·A on q and v (r 8, alpha 16; A ~ U(±1/sqrt(in)), B = 0), backbone frozen (requires_grad
    False), so DDP all-reduces only LoRA and head gradients (loralib / HF PEFT);
  * fish: the empirical Fisher (sum of per-example squared gradients on --fish-samples examples),
    global top 0.5% of the backbone; every weight keeps requires_grad, so DDP all-reduces DENSE
    gradients, and the mask multiplies the gradients after backward (FISH's train loop).
Bytes per step handed to gloo: 4 x (parameters requiring grad) — what DDP's buckets hold.
Rank 0 writes --out (JSON): per-step times and losses, bytes, peak RSS (VmHWM) of every rank.
"""
import argparse
import datetime
import importlib.util
import json
import math
import os
import random
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("golden", os.path.join(ROOT, "scripts", "make_llama_golden.py"))
golden = importlib.util.module_from_spec(spec)
spec.loader.exec_module(golden)


def vm_hwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


# ---- model ---------------------------------------------------------------------------------------

class LoRA(nn.Module):
    def __init__(self, base, r, alpha, gen):
        super().__init__()
        out_f, in_f = base.shape
        bound = 1.0 / math.sqrt(in_f)
        self.A = nn.Parameter(torch.empty(r, in_f).uniform_(-bound, bound, generator=gen))
        self.B = nn.Parameter(torch.zeros(out_f, r))
        self.scale = alpha / r

    def forward(self, x):
        return (x @ self.A.t()) @ self.B.t() * self.scale


class Llama(nn.Module):
    """stories260K as run.c computes it, batched, with a classification head."""

    def __init__(self, W, cfg, num_labels, gen):
        super().__init__()
        self.cfg = cfg
        L = cfg["layers"]
        P = lambda t: nn.Parameter(t.clone())  # noqa: E731
        self.emb = P(W["emb"])
        self.rms_att = nn.ParameterList([P(W["rms_att"][l]) for l in range(L)])
        self.wq = nn.ParameterList([P(W["wq"][l]) for l in range(L)])
        self.wk = nn.ParameterList([P(W["wk"][l]) for l in range(L)])
        self.wv = nn.ParameterList([P(W["wv"][l]) for l in range(L)])
        self.wo = nn.ParameterList([P(W["wo"][l]) for l in range(L)])
        self.rms_ffn = nn.ParameterList([P(W["rms_ffn"][l]) for l in range(L)])
        self.w1 = nn.ParameterList([P(W["w1"][l]) for l in range(L)])
        self.w2 = nn.ParameterList([P(W["w2"][l]) for l in range(L)])
        self.w3 = nn.ParameterList([P(W["w3"][l]) for l in range(L)])
        self.rms_final = P(W["rms_final"])
        self.score = nn.Parameter(torch.empty(num_labels, cfg["dim"]).normal_(0.0, 0.02, generator=gen))
        self.lora_q = self.lora_v = None
        D = cfg["dim"] // cfg["heads"]
        inv = 1.0 / (10000.0 ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
        self.register_buffer("inv_freq", inv, persistent=False)

    def add_lora(self, r, alpha, gen):
        L = self.cfg["layers"]
        self.lora_q = nn.ModuleList([LoRA(self.wq[l], r, alpha, gen) for l in range(L)])
        self.lora_v = nn.ModuleList([LoRA(self.wv[l], r, alpha, gen) for l in range(L)])

    def backbone_params(self):
        return [p for n, p in self.named_parameters() if not n.startswith(("score", "lora_"))]

    @staticmethod
    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w

    def rotary(self, x, cos, sin):  # interleaved pairs (run.c): (x0, x1) -> (x0 c - x1 s, x0 s + x1 c)
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)

    def forward(self, ids, mask):
        B, T = ids.shape
        c = self.cfg
        H, KV, dim = c["heads"], c["kv_heads"], c["dim"]
        D = dim // H
        ang = torch.arange(T, dtype=torch.float32)[:, None] * self.inv_freq[None, :]
        cos, sin = ang.cos(), ang.sin()
        allowed = torch.tril(torch.ones(T, T, dtype=torch.bool))[None, None] & mask.bool()[:, None, None, :]
        x = F.embedding(ids, self.emb)
        for l in range(c["layers"]):
            h = self.rms(x, self.rms_att[l])
            q = h @ self.wq[l].t()
            v = h @ self.wv[l].t()
            if self.lora_q is not None:
                q = q + self.lora_q[l](h)
                v = v + self.lora_v[l](h)
            k = h @ self.wk[l].t()
            q = self.rotary(q.view(B, T, H, D), cos[:, None], sin[:, None]).transpose(1, 2)
            k = self.rotary(k.view(B, T, KV, D), cos[:, None], sin[:, None]).transpose(1, 2)
            v = v.view(B, T, KV, D).transpose(1, 2)
            k = k.repeat_interleave(H // KV, dim=1)
            v = v.repeat_interleave(H // KV, dim=1)
            s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
            s = s.masked_fill(~allowed, torch.finfo(torch.float32).min)
            a = torch.softmax(s, dim=-1) @ v
            x = x + a.transpose(1, 2).reshape(B, T, dim) @ self.wo[l].t()
            h = self.rms(x, self.rms_ffn[l])
            g = h @ self.w1[l].t()
            x = x + (F.silu(g) * (h @ self.w3[l].t())) @ self.w2[l].t()
        x = self.rms(x, self.rms_final)
        last = mask.sum(1) - 1
        return x[torch.arange(B), last] @ self.score.t()


class HFClassifier(nn.Module):
    """A transformers sequence classifier (the real MiniLM), called as the Llama above: model(ids, mask)."""

    def __init__(self, path, num_labels, seed):
        super().__init__()
        import transformers
        transformers.logging.set_verbosity_error()
        torch.manual_seed(seed)  # the new classifier head's initial values
        self.net = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)

    def add_lora(self, r, alpha):
        import peft
        self.net = peft.get_peft_model(self.net, peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=r, lora_alpha=alpha,
                                                                 lora_dropout=0.0, target_modules=["query", "value"]))

    def backbone_params(self):
        return [p for n, p in self.named_parameters() if "classifier" not in n and "lora_" not in n]

    def forward(self, ids, mask):
        return self.net(input_ids=ids, attention_mask=mask).logits


# ---- data ----------------------------------------------------------------------------------------

def read_sst2(split):
    rows = []
    with open(os.path.join(ROOT, "data", "glue", "SST-2", f"{split}.tsv"), encoding="utf-8") as f:
        next(f)
        for line in f:
            text, label = line.rstrip("\n").rsplit("\t", 1)
            rows.append((text.rstrip(), int(label)))
    return rows


def collate(examples, pad=0):
    T = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), T), pad, dtype=torch.long)
    mask = torch.zeros((len(examples), T), dtype=torch.long)
    for i, (e, _) in enumerate(examples):
        ids[i, :len(e)] = torch.tensor(e)
        mask[i, :len(e)] = 1
    return ids, mask, torch.tensor([l for _, l in examples])


# ---- FISH mask (per-example squared gradients, global top-k) ------------------------------------

def fisher_mask(model, examples, keep, world):
    params = model.backbone_params()
    fisher = [torch.zeros_like(p) for p in params]
    for ex in examples:
        ids, mask, labels = collate([ex])
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(ids, mask), labels).backward()
        for f, p in zip(fisher, params):
            f += p.grad.pow(2)
    flat = torch.cat([f.flatten() for f in fisher])
    if world > 1:
        dist.all_reduce(flat)  # the samples are sharded across ranks; every rank gets the same Fisher
    k = round(keep * flat.numel())
    thr_idx = torch.topk(flat, k).indices
    m = torch.zeros_like(flat)
    m[thr_idx] = 1
    out, off = [], 0
    for p in params:
        out.append(m[off:off + p.numel()].view_as(p))
        off += p.numel()
    model.zero_grad(set_to_none=True)
    return out, k


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", choices=["full", "lora", "fish"], required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--lora-alpha", type=float, default=16)
    ap.add_argument("--fish-keep", type=float, default=0.005)
    ap.add_argument("--fish-samples", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--port", type=int, default=29533)
    ap.add_argument("--model", default="stories260K", help="stories260K, or an HF BERT directory")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
    world = int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))
    # Loopback, named explicitly: gloo otherwise picks the interface of the host name (hangs here).
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{a.port}",
                            timeout=datetime.timedelta(seconds=180))

    # data: the examples this run reads (shuffled by seed, the same order on every rank), tokenized once.
    hf = a.model != "stories260K"
    if hf:
        import transformers
        tokenizer = transformers.BertTokenizer(os.path.join(a.model, "vocab.txt"), do_lower_case=True)
    else:
        vocab, scores = golden.read_tokenizer(os.path.join(ROOT, "data", "stories260K", "tok512.bin"))
    train = read_sst2("train")
    order = list(range(len(train)))
    random.Random(a.seed).shuffle(order)
    need = a.steps * a.batch_size * world + a.fish_samples
    cache = {}

    def example(i):
        if i not in cache:
            text, label = train[i]
            if hf:
                cache[i] = tokenizer.encode(text, truncation=True, max_length=a.max_len), label
            else:
                cache[i] = ([1] + golden.runc_encode(vocab, scores, text))[:a.max_len], label
        return cache[i]

    t0 = time.time()
    for j in range(min(need, len(order))):
        example(order[j % len(order)])
    tok_s = time.time() - t0

    gen = torch.Generator().manual_seed(a.seed)
    if hf:
        model = HFClassifier(a.model, 2, a.seed)
        model.train()
    else:
        W, cfg = golden.read_llama2c(os.path.join(ROOT, "data", "stories260K", "stories260K.bin"))
        model = Llama(W, cfg, 2, gen)
    masks = None
    if a.method == "lora" and hf:
        model.add_lora(a.lora_r, a.lora_alpha)  # PEFT freezes the backbone itself
    elif a.method == "lora":
        for p in model.backbone_params():
            p.requires_grad_(False)
        model.add_lora(a.lora_r, a.lora_alpha, gen)
    elif a.method == "fish":
        samples = [example(order[-1 - j]) for j in range(a.fish_samples)]
        local = samples[rank::world]
        masks, k = fisher_mask(model, local, a.fish_keep, world)
    trainable = [p for p in model.parameters() if p.requires_grad]
    grad_params = sum(p.numel() for p in trainable)
    ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=25)
    opt = torch.optim.AdamW(trainable, lr=a.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / a.warmup if s < a.warmup else max(0.0, (a.steps - s) / max(1, a.steps - a.warmup)))
    backbone = model.backbone_params()

    times, losses = [], []
    for step in range(a.steps):
        t = time.perf_counter()
        base = step * a.batch_size * world + rank * a.batch_size
        batch = [example(order[(base + j) % len(order)]) for j in range(a.batch_size)]
        ids, mask, labels = collate(batch)
        opt.zero_grad(set_to_none=False)
        loss = F.cross_entropy(ddp(ids, mask), labels)
        loss.backward()  # DDP all-reduces the gradient buckets (dense) during backward
        if masks is not None:
            for p, m in zip(backbone, masks):
                p.grad.mul_(m)
        if a.clip > 0:
            torch.nn.utils.clip_grad_norm_(trainable, a.clip)
        opt.step()
        sched.step()
        l = torch.tensor([loss.item()], dtype=torch.float64)
        dist.all_reduce(l)  # the logged loss averaged over ranks, as ours does
        times.append(time.perf_counter() - t)
        losses.append(l.item() / world)

    rss = [None] * world
    dist.all_gather_object(rss, vm_hwm())
    if rank == 0:
        with open(a.out, "w") as f:
            json.dump(dict(method=a.method, model=a.model, steps=a.steps, world=world, threads=a.threads,
                           params_requiring_grad=grad_params, bytes_per_step=4 * grad_params,
                           fish_kept=(sum(int(m.sum()) for m in masks) if masks else None),
                           step_time_s=times, loss=losses, peak_rss_bytes=rss, tokenize_s=tok_s,
                           torch=torch.__version__), f)
    # Leave without destroy_process_group / interpreter teardown: gloo's threads sometimes deadlock
    # at exit on this machine (seen: the result written, both ranks idle in futex waits forever).
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
