#!/usr/bin/python3
"""Reference values for tests/dist/test_optim.cpp, from PyTorch 1.13 (Debian's python3-torch).

Writes tests/fixtures/optim/optim_golden.json: a small fixed problem (three parameters of 1, 2 and 3
dimensions, four steps of fixed gradients and learning rates; the 1-D parameter has no gradient at
the third step, so it must be skipped), the parameters after every step and the final optimizer state
for
  - torch.optim.AdamW (defaults, and betas/eps/weight decay changed),
  - Hugging Face's Adafactor with relative_step=False, scale_parameter=False, warmup_init=False
    (transformers is not installed here, so `AdafactorReference` below restates its step: factored
    second moments for >= 2-D tensors, update RMS clipping, optional first moment, HF's weight decay),
and torch.nn.utils.clip_grad_norm_ (total norm and clipped gradients, clipping and not clipping).

Usage: /usr/bin/python3 scripts/make_optim_golden.py [OUT.json]
"""
import json
import math
import os
import sys

import torch

STEPS = 4
LRS = [1e-2, 2e-2, 5e-3, 1e-2]
SHAPES = {"w": [3, 4], "b": [4], "m": [2, 3, 2]}
NO_GRAD = {2: {"b"}}  # step index -> parameters without a gradient at that step


def as_json(t):
    return {"shape": list(t.shape), "data": [float(x) for x in t.detach().reshape(-1).tolist()]}


class AdafactorReference(torch.optim.Optimizer):
    """Adafactor as transformers.optimization.Adafactor computes it with an external learning rate."""

    def __init__(self, params, lr, eps=1e-30, clip_threshold=1.0, decay_rate=-0.8, beta1=None,
                 weight_decay=0.0):
        super().__init__(params, dict(lr=lr, eps=eps, clip_threshold=clip_threshold,
                                      decay_rate=decay_rate, beta1=beta1, weight_decay=weight_decay))

    @staticmethod
    def rms(t):
        return t.norm(2) / (t.numel() ** 0.5)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                st = self.state[p]
                is_factored = g.dim() >= 2
                if not st:
                    st["step"] = 0
                    if group["beta1"] is not None:
                        st["exp_avg"] = torch.zeros_like(g)
                    if is_factored:
                        st["exp_avg_sq_row"] = torch.zeros(g.shape[:-1])
                        st["exp_avg_sq_col"] = torch.zeros(g.shape[:-2] + g.shape[-1:])
                    else:
                        st["exp_avg_sq"] = torch.zeros_like(g)
                st["step"] += 1
                lr = group["lr"]
                beta2t = 1.0 - math.pow(st["step"], group["decay_rate"])
                sq = g ** 2 + group["eps"]
                if is_factored:
                    row, col = st["exp_avg_sq_row"], st["exp_avg_sq_col"]
                    row.mul_(beta2t).add_(sq.mean(dim=-1), alpha=1.0 - beta2t)
                    col.mul_(beta2t).add_(sq.mean(dim=-2), alpha=1.0 - beta2t)
                    r = (row / row.mean(dim=-1, keepdim=True)).rsqrt_().unsqueeze(-1)
                    c = col.unsqueeze(-2).rsqrt()
                    upd = torch.mul(r, c).mul_(g)
                else:
                    v = st["exp_avg_sq"]
                    v.mul_(beta2t).add_(sq, alpha=1.0 - beta2t)
                    upd = v.rsqrt().mul_(g)
                upd.div_((self.rms(upd) / group["clip_threshold"]).clamp_(min=1.0))
                upd.mul_(lr)
                if group["beta1"] is not None:
                    m = st["exp_avg"]
                    m.mul_(group["beta1"]).add_(upd, alpha=1 - group["beta1"])
                    upd = m
                if group["weight_decay"] != 0:
                    p.add_(p, alpha=-group["weight_decay"] * lr)
                p.add_(-upd)


def problem():
    gen = torch.Generator().manual_seed(1234)
    init = {n: torch.randn(s, generator=gen) for n, s in SHAPES.items()}
    grads = [{n: torch.randn(s, generator=gen) for n, s in SHAPES.items()} for _ in range(STEPS)]
    for step, names in NO_GRAD.items():
        for n in names:
            grads[step][n] = None
    return init, grads


def run_case(make_opt, init, grads):
    params = {n: torch.nn.Parameter(t.clone()) for n, t in init.items()}
    opt = make_opt(list(params.values()))
    after = []
    for step in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = LRS[step]
        for n, p in params.items():
            p.grad = None if grads[step][n] is None else grads[step][n].clone()
        opt.step()
        after.append({n: as_json(p) for n, p in params.items()})
    state = {}
    for n, p in params.items():
        for k, v in opt.state[p].items():
            if k == "step":
                state[n + ".step"] = int(v.item()) if torch.is_tensor(v) else int(v)
            elif k != "RMS":
                state[n + "." + k] = as_json(v)
    return after, state


def clip_case(grads, max_norm):
    params = {n: torch.nn.Parameter(torch.zeros(s)) for n, s in SHAPES.items()}
    for n, p in params.items():
        p.grad = grads[0][n].clone() * 3.0
    norm = torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm)
    return {"max_norm": max_norm, "scale_in": 3.0, "total_norm": float(norm),
            "clipped": {n: as_json(p.grad) for n, p in params.items()}}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "optim",
        "optim_golden.json")
    init, grads = problem()
    cases = []
    for name, options, make in [
        ("adamw", {}, lambda ps: torch.optim.AdamW(ps, lr=LRS[0], weight_decay=0.0)),
        ("adamw", {"beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.1},
         lambda ps: torch.optim.AdamW(ps, lr=LRS[0], betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
        ("adafactor", {}, lambda ps: AdafactorReference(ps, lr=LRS[0])),
        ("adafactor", {"beta1": 0.9, "weight_decay": 0.1},
         lambda ps: AdafactorReference(ps, lr=LRS[0], beta1=0.9, weight_decay=0.1)),
    ]:
        after, state = run_case(make, init, grads)
        cases.append({"optimizer": name, "options": options, "after_step": after, "state": state})
    doc = {
        "generator": "scripts/make_optim_golden.py",
        "torch_version": torch.__version__,
        "lrs": LRS,
        "init": {n: as_json(t) for n, t in init.items()},
        "grads": [{n: (None if g is None else as_json(g)) for n, g in step.items()} for step in grads],
        "cases": cases,
        "clip": [clip_case(grads, 1.0), clip_case(grads, 100.0)],
    }
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {out}: {len(cases)} optimizer cases x {STEPS} steps, torch {torch.__version__}")


if __name__ == "__main__":
    main()
