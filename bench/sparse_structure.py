#!/usr/bin/env python3
"""bench/sparse_structure.py — accuracy vs trainable parameters vs bytes per step (issue 17 §3): SparseAdapter at
ratios 0.5 / 0.8 / 0.9 and S3Delta at two budgets, beside dense Houlsby adapters, LoRA and FISH at the same counts,
on SST-2, stories260K and the real all-MiniLM-L6-v2, 2 ranks, 3 seeds.

  bench/sparse_structure.py [--backbones stories260K,minilm] [--seeds 42,43,44] [--quick] [--redo]

Rows of each backbone's table (configs/<m>.ini for stories260K, configs/minilm-<m>.ini for MiniLM, each with its
learning rate and where it comes from):
  sparse_adapter 0.5 / 0.8 / 0.9   configs/[minilm-]sparse_adapter.ini (Houlsby adapters at the houlsby config's
                                   bottleneck, SNIP) with --sparse-adapter.ratio R
  s3delta @ SA 0.9 / @ SA 0.8      `search --config configs/[minilm-]s3delta.ini --s3delta.budget-params B --out F`
                                   with B = sparse_adapter's trainable count at 0.9 (0.8) less the task head (a
                                   structure's budget counts its modules; the retrain adds the head), then
                                   `train --config ... --structure F` (the retrain: the accuracy row). One search per
                                   seed (the search's seed is the retrain's); its time is reported apart.
  houlsby                          the dense adapters of the houlsby config (what sparse_adapter prunes)
  houlsby @ SA 0.8                 --houlsby.bottleneck b: the b whose trainable count (plan) is nearest SA 0.8's
  lora @ SA 0.8                    --lora.r r (the config's targets and alpha): the r nearest SA 0.8's count
  fish @ SA 0.8                    --fish.count = SA 0.8's trainable count less the head (FISH's count excludes the
                                   head, which every method trains), so the trainable totals are equal
Every count comes from `deltatune plan --json` (the s3delta retrain's from `plan --structure F`), at table time.

Each run is one command from the repository root:
  mpirun -np 2 --oversubscribe --bind-to core build/deltatune train --config C --task sst2 --train.seed S
         --train.steps N --train.warmup-steps N/10 --train.max-len 64 --train.eval-every 0 --train.eval-max 0
         --threads 1 [row options] --metrics F
and ends with an evaluation on the whole SST-2 dev set (872 examples). Budget: MiniLM 250 steps (as
bench/real_accuracy.py's SST-2), stories260K 300 (as bench/accuracy.py), batch 16 per rank, warmup 10% (the configs'
own). The S3Delta search runs the same steps, seed and batch.

Runs are recorded one per line in bench/results/sparse_structure.runs.jsonl (accuracy, bytes/step, step time, the
command, a sha256 of the config, the options and, for a retrain, the structure file); a recorded run is not repeated
unless that changed (--redo repeats it), so the table fills over several sessions, and sparse_structure.{md,json} are
rebuilt from every recorded run of the current configs. --quick: stories260K, seed 42, 40 steps, FISH's Fisher over
128 examples (a smoke run of minutes), recorded apart (sparse_structure.quick.*).
"""
import argparse
import hashlib
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

BACKBONES = {
    "stories260K": dict(model=C.STORIES, config="configs/{}.ini", s3delta="configs/s3delta.ini", steps=300,
                        title="stories260K (llama2.c, 260K parameters)"),
    "minilm": dict(model="models/all-minilm-l6-v2", config="configs/minilm-{}.ini",
                   s3delta="configs/minilm-s3delta.ini", steps=250,
                   title="all-MiniLM-L6-v2 (real weights, 22.7M parameters)"),
}
TASK = "sst2"
MAX_LEN = 64
QUICK_STEPS = 40
RATIOS = [0.5, 0.8, 0.9]
MATCH = 0.8            # the dense / LoRA / FISH rows match sparse_adapter at this ratio
S3DELTA_AT = [0.9, 0.8]  # S3Delta's two budgets: sparse_adapter's counts at these ratios


def config_path(backbone, name):
    if name == "s3delta":
        return BACKBONES[backbone]["s3delta"]
    return BACKBONES[backbone]["config"].format(name)


def method_of(config):
    for line in open(os.path.join(C.ROOT, config)):
        if line.startswith("method"):
            return line.split("=", 1)[1].strip()
    raise SystemExit(f"sparse_structure.py: {config} names no method")


def sha_of(config, options, extra=b""):
    h = hashlib.sha256()
    with open(os.path.join(C.ROOT, config), "rb") as f:
        h.update(f.read())
    h.update(json.dumps(options).encode())
    h.update(extra)
    return h.hexdigest()


def file_sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ---------------------------------------------------------------- sizing (plan --json)

_plans = {}


def plan_count(backbone, config, extra):
    """`plan --json` of a config's method options plus extra (cached); the whole JSON object."""
    key = (backbone, config, tuple(extra))
    if key not in _plans:
        pl, err = C.plan(BACKBONES[backbone]["model"], method_of(config),
                         ["--task", TASK] + C.method_options(config) + list(extra))
        if pl is None:
            raise SystemExit(f"sparse_structure.py: plan failed for {config} {' '.join(extra)}: {err}")
        _plans[key] = pl
    return _plans[key]


def nearest(backbone, config, option, target, hi=4096):
    """The smallest integer v of `option` in 1..hi whose trainable count is nearest target (counts grow with v)."""
    count = lambda v: plan_count(backbone, config, [option, str(v)])["trainable_params"]
    lo, up = 1, hi
    while lo < up:                      # smallest v with count(v) >= target
        mid = (lo + up) // 2
        if count(mid) >= target:
            up = mid
        else:
            lo = mid + 1
    best = lo
    if lo > 1 and abs(count(lo - 1) - target) <= abs(count(lo) - target):
        best = lo - 1
    return best, count(best)


def sizing(backbone):
    """The counts every row is matched by, from plan."""
    sa_cfg, fish_cfg = config_path(backbone, "sparse_adapter"), config_path(backbone, "fish")
    head = plan_count(backbone, fish_cfg, ["--fish.count", "1"])["trainable_params"] - 1
    sa = {r: plan_count(backbone, sa_cfg, ["--sparse-adapter.ratio", str(r)])["trainable_params"] for r in RATIOS}
    target = sa[MATCH]
    b, b_count = nearest(backbone, config_path(backbone, "houlsby"), "--houlsby.bottleneck", target)
    r, r_count = nearest(backbone, config_path(backbone, "lora"), "--lora.r", target)
    return dict(head=head, sparse_adapter=sa, target=target, houlsby_bottleneck=b, houlsby_count=b_count,
                lora_r=r, lora_count=r_count, fish_count=target - head,
                s3delta_budgets={x: sa[x] - head for x in S3DELTA_AT})


# ---------------------------------------------------------------- rows

class Row:
    def __init__(self, name, cfg_name, extra, label, matched=None, budget=None):
        self.name, self.cfg_name, self.extra, self.label, self.matched, self.budget = \
            name, cfg_name, extra, label, matched, budget


def rows_of(backbone, sz):
    out = [Row(f"sparse_adapter {r}", "sparse_adapter", ["--sparse-adapter.ratio", str(r)],
               f"ratio {r}, snip, houlsby bottleneck {houlsby_bottleneck(backbone)}") for r in RATIOS]
    for x in S3DELTA_AT:
        out.append(Row(f"s3delta @ SA {x}", "s3delta", [], f"budget {sz['s3delta_budgets'][x]:,} params "
                       f"(SA {x} count − head)", matched=f"sparse_adapter {x}", budget=sz["s3delta_budgets"][x]))
    out.append(Row("houlsby", "houlsby", [], f"bottleneck {houlsby_bottleneck(backbone)} (dense)"))
    out.append(Row(f"houlsby @ SA {MATCH}", "houlsby", ["--houlsby.bottleneck", str(sz["houlsby_bottleneck"])],
                   f"bottleneck {sz['houlsby_bottleneck']} (dense)", matched=f"sparse_adapter {MATCH}"))
    out.append(Row(f"lora @ SA {MATCH}", "lora", ["--lora.r", str(sz["lora_r"])],
                   f"r {sz['lora_r']}, {lora_text(backbone)}", matched=f"sparse_adapter {MATCH}"))
    out.append(Row(f"fish @ SA {MATCH}", "fish", ["--fish.count", str(sz["fish_count"])],
                   f"count {sz['fish_count']:,}", matched=f"sparse_adapter {MATCH}"))
    return out


def ini(config):
    import configparser
    cp = configparser.ConfigParser()
    with open(os.path.join(C.ROOT, config)) as f:
        cp.read_string("[top]\n" + f.read())
    return cp


def houlsby_bottleneck(backbone):
    return ini(config_path(backbone, "houlsby")).getint("houlsby", "bottleneck", fallback=64)


def lora_text(backbone):
    cp = ini(config_path(backbone, "lora"))
    return f"alpha {cp.get('lora', 'alpha', fallback='16')}, targets {cp.get('lora', 'targets', fallback='q,v')}"


def common_options(seed, steps):
    return ["--task", TASK, "--train.seed", str(seed), "--train.steps", str(steps), "--train.warmup-steps",
            str(steps // 10), "--train.max-len", str(MAX_LEN), "--threads", "1"]


EVAL = ["--train.eval-every", "0", "--train.eval-max", "0"]


def search_spec(backbone, row, seed, steps, part):
    config = config_path(backbone, "s3delta")
    options = common_options(seed, steps) + ["--s3delta.budget-params", str(row.budget)]
    sha = sha_of(config, options)
    out = os.path.join(C.CACHE, f"{part}_{backbone}_s3delta_b{row.budget}_{seed}_{sha[:10]}.json")
    return config, options, sha, out


def train_spec(backbone, row, seed, steps, quick, structure_sha=None):
    """(config, options without --structure/--metrics, sha). A retrain's sha covers the structure file's sha."""
    config = config_path(backbone, row.cfg_name)
    options = common_options(seed, steps) + EVAL + row.extra
    if quick and row.cfg_name == "fish":
        options += ["--fish.samples", "128"]
    sha = sha_of(config, options, (structure_sha or "").encode())
    return config, options, sha


def run_key(r):
    return (r["backbone"], r["row"], r["kind"], r["seed"], r["steps"], r.get("options_sha256"))


def execute_search(backbone, row, seed, steps, part, log):
    config, options, sha, out = search_spec(backbone, row, seed, steps, part)
    metrics = out[:-5] + ".search.jsonl"
    for p in (out, metrics):
        if os.path.exists(p):
            os.remove(p)
    cmd = C.mpirun(2) + [C.BIN, "search", "--config", config, *options, "--out", C.rel(out), "--metrics",
                         C.rel(metrics)]
    t0 = time.time()
    rc, text = log.run(cmd, check=False, timeout=6 * 3600)
    wall = time.time() - t0
    record = dict(backbone=backbone, row=row.name, kind="search", method="s3delta", seed=seed, steps=steps,
                  options_sha256=sha, config=config, budget_params=row.budget, structure=C.rel(out),
                  wall_s=round(wall, 1), command=C.recorded_command(cmd))
    if rc != 0 or not os.path.exists(out):
        record["failed"] = (text.strip().splitlines() or [f"rc {rc}"])[-1] if rc != 0 else f"no {C.rel(out)}"
        return record
    with open(out) as f:
        s = json.load(f)
    srch = s.get("search", {})
    rows = C.read_jsonl(metrics) if os.path.exists(metrics) else []
    steps_rows = C.steps_of(rows)
    record.update(structure_sha256=file_sha(out), total_params=s.get("total_params"),
                  modules=len(s.get("modules", [])), candidates=len(s.get("candidates", [])),
                  space_params=s.get("search_space", {}).get("params"),
                  kinds={k: sum(1 for m in s.get("modules", []) if m.get("kind") == k)
                         for k in sorted({m.get("kind") for m in s.get("modules", [])})},
                  search_seconds=float(srch["seconds"]) if srch.get("seconds") is not None else None,
                  search_bytes_per_step=int(C.median([r["bytes_allreduced"] for r in steps_rows]))
                  if steps_rows else int(srch.get("bytes_allreduced_per_step", 0)) or None,
                  search_step_time_s=C.median([r["step_time_s"] for r in steps_rows[3:]]) if steps_rows else None)
    return record


def execute_train(backbone, row, seed, steps, quick, part, log, structure=None, structure_sha=None):
    config, options, sha = train_spec(backbone, row, seed, steps, quick, structure_sha)
    tag = row.name.replace(" ", "_").replace("@", "at")
    metrics = os.path.join(C.CACHE, f"{part}_{backbone}_{tag}_{seed}.jsonl")
    if os.path.exists(metrics):
        os.remove(metrics)
    extra = ["--structure", structure] if structure else []
    cmd = C.mpirun(2) + [C.BIN, "train", "--config", config, *options, *extra, "--metrics", C.rel(metrics)]
    t0 = time.time()
    rc, text = log.run(cmd, check=False, timeout=4 * 3600)
    record = dict(backbone=backbone, row=row.name, kind="train", method=method_of(config), seed=seed, steps=steps,
                  options_sha256=sha, config=config, options=row.extra, wall_s=round(time.time() - t0, 1),
                  command=C.recorded_command(cmd))
    if structure_sha:
        record["structure_sha256"] = structure_sha
    if rc != 0:
        record["failed"] = (text.strip().splitlines() or [f"rc {rc}"])[-1]
        return record
    rows = C.read_jsonl(metrics)
    last = [r for r in rows if "eval_accuracy" in r][-1]
    steps_rows = C.steps_of(rows)
    b = [r["bytes_allreduced"] for r in steps_rows]
    pl, _ = C.plan(BACKBONES[backbone]["model"], method_of(config),
                   ["--task", TASK] + C.method_options(config) + row.extra + extra) if not structure else \
        C.plan(BACKBONES[backbone]["model"], "s3delta", ["--task", TASK, "--structure", structure])
    record.update(eval_accuracy=last["eval_accuracy"], eval_count=last.get("eval_count"),
                  bytes_per_step=int(C.median(b)), bytes_min=min(b), bytes_max=max(b),
                  step_time_s=C.median([r["step_time_s"] for r in steps_rows[3:]]), steps_done=len(steps_rows),
                  trainable_params=(pl or {}).get("trainable_params"))
    return record


write_runs = C.write_jsonl


def replace(runs, record):
    k = run_key(record)[:5]
    return [r for r in runs if run_key(r)[:5] != k] + [record]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--backbones", default="")
    ap.add_argument("--seeds", default="")
    ap.add_argument("--redo", action="store_true")
    a = ap.parse_args()
    backbones = a.backbones.split(",") if a.backbones else (["stories260K"] if a.quick else list(BACKBONES))
    seeds = [int(s) for s in a.seeds.split(",")] if a.seeds else ([42] if a.quick else [42, 43, 44])
    for b in backbones:
        if b not in BACKBONES:
            sys.exit(f"sparse_structure.py: unknown backbone '{b}' ({', '.join(BACKBONES)})")
        if not os.path.exists(os.path.join(C.ROOT, BACKBONES[b]["model"])):
            sys.exit(f"sparse_structure.py: {BACKBONES[b]['model']} missing (scripts/fetch-models.sh)")
        for n in ("sparse_adapter", "s3delta", "houlsby", "lora", "fish"):
            if not os.path.exists(os.path.join(C.ROOT, config_path(b, n))):
                sys.exit(f"sparse_structure.py: no {config_path(b, n)}")
    if not os.access(C.BIN, os.X_OK):
        sys.exit(f"sparse_structure.py: {C.rel(C.BIN)} missing (build it first)")
    for m in ("sparse_adapter", "s3delta"):
        known, msg = C.method_known(m)
        if not known:
            sys.exit(f"sparse_structure.py: this binary lacks {m}: {msg}")
    part = "sparse_structure.quick" if a.quick else "sparse_structure"
    steps_of = lambda b: QUICK_STEPS if a.quick else BACKBONES[b]["steps"]
    runs_path = os.path.join(C.RESULTS, part + ".runs.jsonl")
    runs = C.read_jsonl(runs_path) if os.path.exists(runs_path) else []
    log = C.Log(part)

    for b in backbones:
        sz = sizing(b)
        steps = steps_of(b)
        for seed in seeds:
            for row in rows_of(b, sz):
                if row.cfg_name != "s3delta":
                    _, _, sha = train_spec(b, row, seed, steps, a.quick)
                    key = (b, row.name, "train", seed, steps, sha)
                    if not a.redo and any(run_key(r) == key for r in runs):
                        continue
                    runs = replace(runs, execute_train(b, row, seed, steps, a.quick, part, log))
                    write_runs(runs_path, runs)
                    continue
                # S3Delta: search (unless recorded and its structure file is still there), then retrain
                _, _, ssha, out = search_spec(b, row, seed, steps, part)
                skey = (b, row.name, "search", seed, steps, ssha)
                srec = next((r for r in runs if run_key(r) == skey), None)
                if srec is not None and "failed" in srec and not a.redo:
                    continue
                def retrain_recorded(search):
                    _, _, tsha = train_spec(b, row, seed, steps, a.quick, search["structure_sha256"])
                    return any(run_key(r) == (b, row.name, "train", seed, steps, tsha) for r in runs)
                if srec is not None and not a.redo and retrain_recorded(srec):
                    continue  # search and retrain both recorded: the structure file (bench/.cache) isn't needed
                have = srec is not None and "failed" not in srec and os.path.exists(out) and \
                    file_sha(out) == srec.get("structure_sha256")
                if a.redo or not have:
                    srec = execute_search(b, row, seed, steps, part, log)
                    runs = replace(runs, srec)
                    write_runs(runs_path, runs)
                    if "failed" in srec:
                        continue
                if not a.redo and retrain_recorded(srec):
                    continue
                runs = replace(runs, execute_train(b, row, seed, steps, a.quick, part, log, C.rel(out),
                                                   srec["structure_sha256"]))
                write_runs(runs_path, runs)
    save_commands(part, runs)
    write_table(part, runs, backbones, a.quick)


def save_commands(part, runs):
    def outcome(r):
        if r["kind"] == "search":
            return (f"structure {r['structure']}: {r['modules']} of {r['candidates']} modules, "
                    f"{r['total_params']:,} params, search {r.get('search_seconds')} s (wall {r['wall_s']} s)")
        return f"dev accuracy {r['eval_accuracy']:.4f}, {r['bytes_per_step']:,} B/step"
    C.save_run_commands(part, f"bench/sparse_structure.py{' --quick' if 'quick' in part else ''}", runs,
                        lambda r: f"{r['backbone']} {r['row']} ({r['kind']}) seed {r['seed']}, {r['steps']} steps",
                        outcome)


def mean_std(xs):
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(runs, b, row, steps, quick, part):
    """A row's cells from its recorded runs of the current config and options (any seed)."""
    got, searches = [], []
    for r in runs:
        if r["backbone"] != b or r["row"] != row.name or r["steps"] != steps:
            continue
        seed = r["seed"]
        if row.cfg_name == "s3delta":
            _, _, ssha, _ = search_spec(b, row, seed, steps, part)
            s = next((x for x in runs if run_key(x) == (b, row.name, "search", seed, steps, ssha)), None)
            if r["kind"] == "search" and r is s:
                searches.append(r)
            elif r["kind"] == "train" and s is not None and "structure_sha256" in s and \
                    r.get("options_sha256") == train_spec(b, row, seed, steps, quick, s["structure_sha256"])[2]:
                got.append(r)
        elif r["kind"] == "train" and r.get("options_sha256") == train_spec(b, row, seed, steps, quick)[2]:
            got.append(r)
    ok = sorted([r for r in got if "failed" not in r], key=lambda r: r["seed"])
    failed = [r for r in got + searches if "failed" in r]
    out = dict(row=row.name, config=config_path(b, row.cfg_name), method=method_of(config_path(b, row.cfg_name)),
               options=row.extra, label=row.label, matched_to=row.matched)
    if row.cfg_name == "s3delta":
        out["budget_params"] = row.budget
        sok = sorted([s for s in searches if "failed" not in s], key=lambda s: s["seed"])
        if sok:
            out["search"] = dict(
                seeds=len(sok), seconds=[float(s["search_seconds"]) for s in sok if s.get("search_seconds") is not None], wall_s=[s["wall_s"] for s in sok],
                total_params=[s["total_params"] for s in sok], modules=[s["modules"] for s in sok],
                candidates=sok[0]["candidates"], space_params=sok[0].get("space_params"),
                kinds=[s.get("kinds") for s in sok], bytes_per_step=sok[0].get("search_bytes_per_step"),
                step_time_s=C.median([s["search_step_time_s"] for s in sok if s.get("search_step_time_s")]))
        counts = sorted({r["trainable_params"] for r in ok if r.get("trainable_params")})
        if counts:
            out["trainable"] = counts
    else:
        pl, _ = C.plan(BACKBONES[b]["model"], out["method"],
                       ["--task", TASK] + C.method_options(out["config"]) + row.extra)
        if pl:
            out["trainable"] = [pl["trainable_params"]]
            out["plan_bytes_per_step"] = pl["bytes_per_step_per_rank"]
    if failed:
        f = failed[-1]
        out["failed"] = f"{f['kind']} seed {f['seed']}: {f['failed']}"
    if ok:
        m, s = mean_std([r["eval_accuracy"] for r in ok])
        out.update(accuracy=dict(mean=m, std=s, seeds=len(ok), per_seed={r["seed"]: r["eval_accuracy"] for r in ok}),
                   bytes_per_step=sorted({r["bytes_per_step"] for r in ok}),
                   bytes_vary_within_run=any(r["bytes_min"] != r["bytes_max"] for r in ok),
                   step_time_s=C.median([r["step_time_s"] for r in ok]))
    return out


def rng(xs, fmt=lambda x: f"{x:,}"):
    xs = sorted(set(xs))
    return fmt(xs[0]) if len(xs) == 1 else f"{fmt(xs[0])}–{fmt(xs[-1])}"


def write_table(part, runs, backbones, quick):
    shown = [b for b in BACKBONES if not quick or b in backbones or any(r["backbone"] == b for r in runs)]
    out = dict(task=TASK, max_len=MAX_LEN, quick=quick, ratios=RATIOS, match_ratio=MATCH, s3delta_at=S3DELTA_AT,
               backbones={}, note=C.machine_note())
    md = []
    for b in shown:
        steps = QUICK_STEPS if quick else BACKBONES[b]["steps"]
        sz = sizing(b)
        table = [summarize(runs, b, row, steps, quick, part) for row in rows_of(b, sz)]
        out["backbones"][b] = dict(model=BACKBONES[b]["model"], steps=steps, sizing=sz, rows=table)
        header = ["method", "config", "trainable", "bytes/step/rank", "SST-2 acc % mean ± std (seeds)",
                  "S3Delta search (per seed)"]
        lines = []
        for r in table:
            cells = [f"`{r['row']}`", f"{r['label']} (`{r['config']}`)",
                     rng(r["trainable"]) if r.get("trainable") else
                     (f"≤ {r['budget_params'] + sz['head']:,} (budget + head)" if "budget_params" in r else "–")]
            bps = r.get("bytes_per_step")
            cells.append(rng(bps) + (" (varies)" if r.get("bytes_vary_within_run") else "") if bps else
                         (f"{r['plan_bytes_per_step']:,} (plan)" if r.get("plan_bytes_per_step") else "–"))
            acc = r.get("accuracy")
            cells.append(f"{100 * acc['mean']:.1f} ± {100 * acc['std']:.1f} ({acc['seeds']})" if acc else "not run yet")
            if "failed" in r:
                cells[-1] += f" — failed: {r['failed'][:90]}"
            s = r.get("search")
            if s:
                secs = [x for x in s["seconds"] if x is not None]
                cells.append(f"{statistics.mean(secs):.0f} s ({s['seeds']}; wall {statistics.mean(s['wall_s']):.0f} s)"
                             f", {s['step_time_s']:.2f} s/step, {s['bytes_per_step']:,} B/step; "
                             f"{rng(s['modules'], str)} of {s['candidates']} modules, "
                             f"{rng(s['total_params'])} of {s['space_params']:,} params" if secs else "–")
            else:
                cells.append("not run yet" if r["method"] == "s3delta" else "")
            lines.append(cells)
        md.append(f"### Sparse structures vs dense at the same count, {BACKBONES[b]['title']}: SST-2 dev (872), 2 ranks, "
                  f"batch 32, {steps} steps, mean ± std over seeds{' — QUICK (a smoke run, one seed)' if quick else ''}"
                  f"\n\n")
        md.append(C.md_table(header, lines))
        sa = sz["sparse_adapter"]
        md.append(
            f"\nCounts (every one from `deltatune plan --json`, the task head of {sz['head']:,} included): "
            f"`sparse_adapter` at ratio 0.5 / 0.8 / 0.9 keeps {sa[0.5]:,} / {sa[0.8]:,} / {sa[0.9]:,} trainable of "
            f"the dense adapters' {plan_count(b, config_path(b, 'houlsby'), [])['trainable_params']:,} (`houlsby`, bottleneck "
            f"{houlsby_bottleneck(b)}). Matched to `sparse_adapter {MATCH}` ({sz['target']:,}): `houlsby` at the "
            f"bottleneck whose count is nearest ({sz['houlsby_bottleneck']}: {sz['houlsby_count']:,}; the step of one "
            f"bottleneck unit is the granularity), `lora` at the nearest rank (r {sz['lora_r']}: {sz['lora_count']:,}; "
            f"{lora_text(b)} from `{config_path(b, 'lora')}`, alpha kept as the LoRA paper does when it varies r), "
            f"`fish` with `--fish.count {sz['fish_count']:,}` (= {sz['target']:,} − the head, which FISH's count "
            f"leaves out; equal totals). S3Delta's budgets are the counts of `sparse_adapter` "
            + " and ".join(f"{x} ({sz['s3delta_budgets'][x]:,} = {sa[x]:,} − head)" for x in S3DELTA_AT)
            + "; its greedy fill keeps a structure of at most the budget, and the retrain adds the head, so its "
            "trainable count is at most the matched row's (per seed: `plan --structure F`).\n\n")
    if quick:
        md.append("QUICK: a smoke run of the harness (40 steps, one seed): the accuracies are near chance and say "
                  "nothing about the methods.\n\n")
    md.append(
        "Every run ends with an evaluation on the whole SST-2 dev set (872 examples); mean ± std over seeds. "
        "bytes/step/rank: the gradient payload all-reduced per training step (exact, `train --metrics` "
        "`bytes_allreduced`, median over the steps; `(plan)` where the row has not run yet: plan's "
        "bytes_per_step_per_rank). S3Delta: per seed one `deltatune search` (same steps, batch, seed and max-len as the "
        "retrain; the bi-level search runs two forward/backward passes a step over the whole candidate space and "
        "all-reduces its weights and α's, its bytes/step in the last column) then a retrain of the chosen structure "
        "from scratch (`train --structure F`, the accuracy and bytes/step columns); the search time is the "
        "structure file's `search.seconds` (wall: the whole mpirun command, start-up included), not counted in the "
        "retrain's. Learning rates and options from each method's config (configs/<m>.ini for stories260K, "
        "configs/minilm-<m>.ini for MiniLM; sparse_adapter at the houlsby config's rate, S3Delta at the LoRA "
        "config's), warmup 10% of the steps, max-len 64, `--threads 1` per rank.\n\n" + C.machine_note() + "\n")
    C.write_json(part + ".json", out)
    with open(os.path.join(C.RESULTS, part + ".md"), "w") as f:
        f.write("".join(md))


if __name__ == "__main__":
    main()
