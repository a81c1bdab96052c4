#!/usr/bin/env python3
"""bench/comm_methods.py — bytes per step per method, two ways, and an alpha-beta projection.

Measured (stories260K + SST-2, 2 ranks): every method trains N steps under Open MPI's monitoring PML;
per rank we read our own counter (`--metrics` key bytes_allreduced, collectives) and the bytes Open MPI
saw sent inside collectives (the `I` lines), divided by the steps. Ideal ring volume per rank per step
= 2(n-1)/n x trainable bytes. The FISH mask is precomputed (`deltatune mask`), so the run's traffic
is training traffic; what remains besides the gradients is the start-up agreement, the per-step loss
all-reduce and the final evaluation's counts (a few hundred bytes).

T5-base and T5-3B: `deltatune plan --json` (nothing allocated). The alpha-beta model projects one
step's gradient all-reduce time on p GPUs from the trainable bytes and the buckets (1 MiB first,
25 MiB after):
  ring:  2(p-1) * alpha + 2(p-1)/p * S / beta          (per bucket of S bytes)
  tree:  2 ceil(log2 p) * alpha + tree_factor * S / beta
  auto:  the cheaper of the two per bucket (what NCCL's tuner approximates).
alpha, beta, tree_factor are inputs (--alpha-us, --beta-gbps, --tree-factor); presets nvlink and ib.
"""
import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

ALL_METHODS = ["full", "bitfit", "lora", "houlsby", "pfeiffer", "parallel_adapter", "prefix", "prompt",
               "ia3", "compacter", "mam", "lst", "fish", "dsee"]
QUICK_METHODS = ["full", "bitfit", "lora", "houlsby", "lst", "fish", "dsee"]
PROJECTED = ["full", "fish", "dsee", "lora", "lst"]

# Presets: alpha (s), beta (bytes/s per GPU link), tree bandwidth factor. NVLink: A100/H100-class NVLink
# within a node as every hop (an upper bound of what a flat network could give); IB: HDR 200 Gb/s
# InfiniBand, one NIC per GPU, every hop over the fabric.
PRESETS = {
    "nvlink": dict(alpha=5e-6, beta=150e9, tree_factor=2.0),
    "ib": dict(alpha=15e-6, beta=25e9, tree_factor=2.0),
}
MIB = 1 << 20


def buckets(total_bytes, first=1 * MIB, cap=25 * MIB):
    """Bucket sizes of GradSync's rule for one flat byte count (a tensor never split; approximation)."""
    if total_bytes <= 0:
        return []
    out = [min(total_bytes, first)]
    rest = total_bytes - out[0]
    while rest > 0:
        out.append(min(rest, cap))
        rest -= out[-1]
    return out


def allreduce_time(S, p, alpha, beta, tree_factor, algo="auto"):
    if p <= 1:
        return 0.0
    ring = 2 * (p - 1) * alpha + 2 * (p - 1) / p * S / beta
    tree = 2 * math.ceil(math.log2(p)) * alpha + tree_factor * S / beta
    return {"ring": ring, "tree": tree, "auto": min(ring, tree)}[algo]


def step_comm_time(total_bytes, p, preset, algo="auto"):
    return sum(allreduce_time(b, p, algo=algo, **preset) for b in buckets(total_bytes))


def measure(log, methods, steps, mask):
    rows = []
    for m in methods:
        known, msg = C.method_known(m)
        if not known:
            rows.append(dict(method=m, missing=msg))
            continue
        cfg = f"configs/{m}.ini" if os.path.exists(os.path.join(C.ROOT, f"configs/{m}.ini")) else "configs/main.ini"
        pl, err = C.plan(C.STORIES, m, C.method_options(cfg))
        prof = os.path.join(C.CACHE, f"mon_{m}")
        metrics = os.path.join(C.CACHE, f"comm_{m}.jsonl")
        C.clean(prof)
        if os.path.exists(metrics):
            os.remove(metrics)
        extra = ["--fish.mask", mask] if m == "fish" else []
        cmd = C.mpirun(2, monitor=C.rel(prof)) + [
            C.BIN, "train", "--config", cfg, "--method", m, "--train.steps", str(steps), "--train.eval-every", "0",
            "--train.eval-max", "64", "--metrics", C.rel(metrics), *extra]
        rc, out = log.run(cmd, check=False)
        if rc != 0:
            rows.append(dict(method=m, failed=out.strip().splitlines()[-1] if out.strip() else f"rc {rc}"))
            continue
        st = C.steps_of(C.read_jsonl(metrics))
        mon = C.monitoring_bytes(prof, 2)
        tb = pl["trainable_bytes"]
        ideal = 2 * (2 - 1) / 2 * tb
        rows.append(dict(
            method=m, config=cfg, trainable_params=pl["trainable_params"], trainable_bytes=tb,
            counter_bytes_per_step=C.median([s["bytes_allreduced"] for s in st]),
            collectives_per_step=C.median([s["collectives"] for s in st]),
            monitoring_bytes_per_step_per_rank=[b / steps for b in mon],
            monitoring_over_ideal=max(mon) / steps / ideal, steps=steps,
            step_time_s_median=C.median([s["step_time_s"] for s in st])))
    return rows


def plans(models, methods):
    out = {}
    for model in models:
        for m in methods:
            pl, err = C.plan(model, m)
            out[f"{model}/{m}"] = pl if pl else dict(missing=err)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--algo", default="auto", choices=["ring", "tree", "auto"])
    ap.add_argument("--alpha-us", type=float, help="override both presets' latency (microseconds)")
    ap.add_argument("--beta-gbps", type=float, help="override both presets' bandwidth (GB/s)")
    ap.add_argument("--tree-factor", type=float)
    ap.add_argument("--replot", action="store_true", help="only redraw the PNG from comm_methods.json")
    a = ap.parse_args()
    if a.replot:
        import json
        d = json.load(open(os.path.join(C.RESULTS, "comm_methods.json")))
        plot(d["measured"], d["plans"], d["projection"]["seconds"], d["projection"]["gpus"])
        return
    presets = {k: dict(v) for k, v in PRESETS.items()}
    for v in presets.values():
        if a.alpha_us is not None:
            v["alpha"] = a.alpha_us * 1e-6
        if a.beta_gbps is not None:
            v["beta"] = a.beta_gbps * 1e9
        if a.tree_factor is not None:
            v["tree_factor"] = a.tree_factor
    log = C.Log("comm_methods")
    methods = QUICK_METHODS if a.quick else ALL_METHODS
    steps = 5 if a.quick else 20
    mask = C.fish_mask(log, 256 if a.quick else 1024)
    measured = measure(log, methods, steps, mask)
    big = plans(["t5-base", "t5-3b"], methods)
    gpus = [8, 16, 32, 64, 128, 256, 512]
    proj = {}
    for model in ["t5-base", "t5-3b"]:
        for m in PROJECTED:
            pl = big.get(f"{model}/{m}") or C.plan(model, m)[0] or {}
            if "trainable_bytes" not in pl:
                continue
            for name, pre in presets.items():
                proj[f"{model}/{m}/{name}"] = [step_comm_time(pl["trainable_bytes"], p, pre, a.algo) for p in gpus]
    C.write_json("comm_methods.json", dict(measured=measured, plans=big, projection=dict(
        gpus=gpus, algo=a.algo, presets=presets, seconds=proj), note=C.machine_note()))
    write_tables(measured, big, proj, gpus, presets, a.algo)
    plot(measured, big, proj, gpus)
    log.save()


def write_tables(measured, big, proj, gpus, presets, algo):
    rows = []
    for r in measured:
        if "missing" in r or "failed" in r:
            rows.append([f"`{r['method']}`", "missing: " + r.get("missing", r.get("failed", ""))] + [""] * 6)
            continue
        mon = r["monitoring_bytes_per_step_per_rank"]
        rows.append([f"`{r['method']}`", C.fmt_int(r["trainable_params"]), C.fmt_int(r["trainable_bytes"]),
                     C.fmt_int(int(r["counter_bytes_per_step"])), " / ".join(f"{b:,.0f}" for b in mon),
                     f"{r['monitoring_over_ideal']:.4f}", f"{r['collectives_per_step']:g}",
                     f"{1000 * r['step_time_s_median']:.0f}"])
    t1 = C.md_table(["method", "trainable", "trainable bytes", "bytes/step (our counter)",
                     "bytes/step/rank (Open MPI, rank 0 / 1)", "Open MPI ÷ ring ideal", "collectives/step",
                     "step ms (median)"], rows)
    rows2 = []
    for key, pl in big.items():
        model, m = key.split("/")
        if "missing" in pl:
            rows2.append([model, f"`{m}`", "missing", "", "", ""])
            continue
        nb = len(buckets(pl["trainable_bytes"]))
        rows2.append([model, f"`{m}`", C.fmt_int(pl["trainable_params"]),
                      f"{100 * pl['trainable_params'] / pl['total_params']:.3f}", C.fmt_int(pl["trainable_bytes"]),
                      C.fmt_int(pl["bytes_per_step_per_rank"]), nb])
    t2 = C.md_table(["model", "method", "trainable", "%", "trainable bytes", "bytes/step/rank (plan, n=2)",
                     "collectives/step (bucket rule)"], rows2)
    rows3 = []
    for key, secs in proj.items():
        model, m, pre = key.split("/")
        rows3.append([model, f"`{m}`", pre] + [f"{1000 * s:.3f}" for s in secs])
    t3 = C.md_table(["model", "method", "network"] + [f"{p} GPUs (ms)" for p in gpus], rows3)
    pres = "; ".join(f"{k}: α = {v['alpha'] * 1e6:g} µs, β = {v['beta'] / 1e9:g} GB/s, tree factor {v['tree_factor']:g}"
                     for k, v in presets.items())
    with open(os.path.join(C.RESULTS, "comm_methods.md"), "w") as f:
        f.write("### Bytes per step per method, measured (stories260K + SST-2, 2 ranks)\n\n" + t1 +
                "\nOpen MPI ÷ ring ideal = (Open MPI monitoring bytes per step, the larger rank) ÷ (2(n−1)/n × trainable "
                "bytes); the remainder over 1 is the start-up agreement, the per-step loss all-reduce and the final "
                "evaluation's counts. FISH trains over a precomputed mask (`deltatune mask`).\n\n"
                "### T5-base and T5-3B (`deltatune plan --json`)\n\n" + t2 +
                f"\n### Projected gradient all-reduce time per step (alpha–beta model, {algo})\n\n" + t3 +
                f"\nPresets: {pres}. Per bucket: ring 2(p−1)α + 2(p−1)/p·S/β, tree 2⌈log2 p⌉α + f·S/β; "
                "`auto` takes the cheaper. Flat networks (no hierarchy): NVLink is an upper bound past 8 GPUs.\n\n"
                + C.machine_note() + "\n")


def plot(measured, big, proj, gpus):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 3, figsize=(17, 5))
    ok = [r for r in measured if "trainable_bytes" in r]
    x = range(len(ok))
    ax[0].bar([i - 0.2 for i in x], [r["counter_bytes_per_step"] for r in ok], 0.4, label="our counter")
    ax[0].bar([i + 0.2 for i in x], [max(r["monitoring_bytes_per_step_per_rank"]) for r in ok], 0.4,
              label="Open MPI monitoring")
    ax[0].set_xticks(list(x))
    ax[0].set_xticklabels([r["method"] for r in ok], rotation=45)
    ax[0].set_yscale("log")
    ax[0].set_ylabel("bytes per step per rank")
    ax[0].set_title("stories260K, 2 ranks (measured)")
    ax[0].legend()
    for i, model in enumerate(["t5-base", "t5-3b"]):
        a = ax[1 + i]
        for key, secs in proj.items():
            mo, m, pre = key.split("/")
            if mo != model:
                continue
            a.plot(gpus, [1000 * s for s in secs], marker="o", ls="-" if pre == "ib" else "--",
                   color=f"C{PROJECTED.index(m)}", label=f"{m} ({pre})")
        a.set_xscale("log", base=2)
        a.set_yscale("log")
        a.set_xlabel("GPUs")
        a.set_ylabel("projected all-reduce ms per step")
        a.set_title(f"{model}: alpha-beta projection")
        a.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(C.RESULTS, "comm_methods.png"), dpi=110)


if __name__ == "__main__":
    main()
