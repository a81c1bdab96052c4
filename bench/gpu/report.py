#!/usr/bin/env python3
"""bench/gpu/report.py — the JSON that scripts/gpu-check.sh writes besides the binary's own, and its summary.

  report.py facts OUT      torch.cuda's view of the machine -> OUT/torch.json (the only part importing torch)
  report.py status OUT     OUT/status.tsv (one line per step, appended by gpu-check.sh) -> OUT/status.json
  report.py threads OUT    OUT/threads_<n>.jsonl (CPU main job, 2 ranks, --threads n) -> OUT/threads.json
  report.py summary OUT    a short summary of everything in OUT on stdout and in OUT/summary.txt; the ctest
                           logs' per-test results -> OUT/ctest_gpu.json, OUT/ctest.json
Every part reads what exists and says what is missing: a step that failed leaves no file, not a crash here.
"""
import glob
import json
import os
import re
import statistics
import sys
import time

SKIP = 5  # steps left out of a step-time median: the first ones warm caches, allocators and kernels


def read_jsonl(path):
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except ValueError:  # a run killed mid-write leaves half a line
                    pass
    return out


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def facts(out):
    import torch
    d = dict(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
             cudnn=torch.backends.cudnn.version(), cpu_count=os.cpu_count(),
             float32_matmul_precision=torch.get_float32_matmul_precision())
    try:
        d["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    except Exception as e:  # noqa: BLE001 (a CPU torch has none)
        d["nccl"] = f"unavailable: {e}"
    if torch.cuda.is_available():
        d["devices"] = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            d["devices"].append(dict(name=p.name, capability=f"{p.major}.{p.minor}", total_gib=p.total_memory / 2**30,
                                     multiprocessors=p.multi_processor_count))
        d["bf16_supported"] = torch.cuda.is_bf16_supported()
        # A sanity figure: bf16 8192^3 matmul throughput (an H200 gives several hundred TFLOP/s).
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            a @ a
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            a @ a
        torch.cuda.synchronize()
        d["bf16_matmul_tflops"] = 10 * 2 * 8192**3 / (time.perf_counter() - t0) / 1e12
    write_json(os.path.join(out, "torch.json"), d)
    print(json.dumps(d))


def status(out):
    rows = []
    with open(os.path.join(out, "status.tsv")) as f:
        for line in f:
            name, st, rc, secs, limit, note = (line.rstrip("\n").split("\t") + [""] * 6)[:6]
            rows.append(dict(step=name, status=st, rc=int(rc), seconds=float(secs), limit_s=int(limit),
                             log=f"{name}.log", note=note))
    write_json(os.path.join(out, "status.json"), rows)


def median_ms(path):
    st = [m for m in read_jsonl(path) if "step_time_s" in m]
    timed = st[SKIP:] or st
    return (1000 * statistics.median(m["step_time_s"] for m in timed) if timed else None), len(st)


def threads(out):
    res = []
    for path in glob.glob(os.path.join(out, "threads_*.jsonl")):
        n = int(re.search(r"threads_(\d+)\.jsonl$", path).group(1))
        ms, steps = median_ms(path)
        res.append(dict(threads=n, median_step_ms=ms, steps=steps))
    res.sort(key=lambda r: r["threads"])
    default = next((r["median_step_ms"] for r in res if r["threads"] == 0), None)
    for r in res:
        r["slowdown_vs_default"] = r["median_step_ms"] / default if default and r["median_step_ms"] else None
    write_json(os.path.join(out, "threads.json"),
               dict(rows=res, note=f"CPU main job (configs/main.ini, --device cpu, mpirun -np 2 with its default "
                                   f"binding, one core a rank), median step time over the steps after the first "
                                   f"{SKIP}; threads 0 = the default (the cores a rank is bound to), 8 = the old "
                                   f"default there; {os.cpu_count()} cores"))
    return res


CTEST_LINE = re.compile(r"Test\s+#\d+:\s+(\S+)\s+\.*\s*(\*{3})?([A-Za-z][\w ]*?)(?::\s*(\S+))?\s+([\d.]+)\s+sec")


def ctest(out, name):
    """Per-test results from a ctest log (its JUnit file is written only when ctest ends on its own)."""
    path = os.path.join(out, f"{name}.log")
    if not os.path.exists(path):
        return None
    tests = []
    text = open(path, errors="replace").read()
    for m in CTEST_LINE.finditer(text):
        tests.append(dict(test=m.group(1), result=m.group(3).strip() + (": " + m.group(4) if m.group(4) else ""),
                          seconds=float(m.group(5))))
    tot = re.search(r"(\d+)% tests passed, (\d+) tests? failed out of (\d+)", text)
    res = dict(tests=tests, passed=sum(t["result"] == "Passed" for t in tests),
               failed=[t["test"] for t in tests if t["result"] != "Passed"],
               total=int(tot.group(3)) if tot else None, finished=bool(tot),
               no_tests="No tests were found" in text)
    write_json(os.path.join(out, f"{name}.json"), res)
    return res


def summary(out):
    lines = [f"gpu-check summary ({out})"]
    st = json.load(open(os.path.join(out, "status.json"))) if os.path.exists(os.path.join(out, "status.json")) else []
    lines.append("steps: " + ", ".join(f"{s['step']} {s['status']} {s['seconds']:.0f}s" for s in st))
    tj = os.path.join(out, "torch.json")
    if os.path.exists(tj):
        t = json.load(open(tj))
        dev = t.get("devices", [{}])[0]
        lines.append(f"torch {t['torch']} cuda {t['cuda']}: {dev.get('name', 'no GPU')}, "
                     f"{dev.get('total_gib', 0):.0f} GiB, bf16 matmul {t.get('bf16_matmul_tflops', 0):.0f} TFLOP/s")
    for name in ("ctest_gpu", "ctest"):
        c = ctest(out, name)
        if c:
            lines.append(f"{name}: {c['passed']} passed of {c['total'] if c['total'] is not None else len(c['tests'])}"
                         + ("" if c["finished"] else " (did not finish)") + (" (no tests matched)" if c["no_tests"] else "")
                         + (f"; not passed: {', '.join(c['failed'][:12])}" if c["failed"] else ""))
    for name in ("main_cuda", "main_cuda_np2"):
        p = os.path.join(out, f"{name}.jsonl")
        if os.path.exists(p):
            ms, steps = median_ms(p)
            acc = [m["eval_accuracy"] for m in read_jsonl(p) if "eval_accuracy" in m]
            lines.append(f"{name}: {steps} steps, median {ms:.2f} ms/step" if ms else f"{name}: no steps")
            lines[-1] += f", dev accuracy {' / '.join(f'{a:.4f}' for a in acc)}" if acc else ""
    if glob.glob(os.path.join(out, "threads_*.jsonl")):
        lines.append("threads (CPU main job): " + ", ".join(
            f"{r['threads']}: {r['median_step_ms']:.1f} ms" if r["median_step_ms"] else f"{r['threads']}: –"
            for r in threads(out)))
    cb = os.path.join(out, "commbench_nccl.json")
    if os.path.exists(cb):
        rows = json.load(open(cb))
        if rows:
            big = max(rows, key=lambda r: r["size_bytes"])
            lines.append(f"commbench nccl (1 rank): {len(rows)} sizes, {sum(r['wrong'] for r in rows)} wrong, "
                         f"{big['size_bytes']} B in {big['time_us']:.0f} us (busbw {big['busbw_gbps']:.1f} GB/s)")
    gj = os.path.join(out, "gpu.json")
    if os.path.exists(gj):
        f = lambda x, s: "–" if x is None else format(x, s)  # noqa: E731
        lines.append("bench (ours | torch: ms/step, peak GiB):")
        for r in json.load(open(gj)):
            lines.append(f"  {r['model']:12} {r['method']:8} {f(r.get('ours_ms'), '8.1f')} {f(r.get('ours_peak_gib'), '6.2f')}"
                         f" | {f(r.get('torch_ms'), '8.1f')} {f(r.get('torch_peak_gib'), '6.2f')}"
                         + "".join(f"  [{k[:-6]}: {r[k][:100]}]" for k in ("ours_error", "torch_error") if r.get(k)))
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "summary.txt"), "w") as fh:
        fh.write(text)
    print(text, end="")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("facts", "status", "threads", "summary"):
        sys.exit("usage: report.py facts|status|threads|summary OUT_DIR")
    globals()[sys.argv[1]](sys.argv[2])
