#!/usr/bin/python3
"""bench/summarize.py — bench/results/summary.json from the parts' JSON files (run by bench/run-all)."""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402


def load(name):
    p = os.path.join(C.RESULTS, name)
    return json.load(open(p)) if os.path.exists(p) else {}


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "full"
    comm, pvo, mem, big, acc = (load(n) for n in ["comm_methods.json", "python_vs_ours.json", "memory_t5.json",
                                                  "t5_big.json", "accuracy.json"])
    s = dict(mode=mode, generated=time.strftime("%Y-%m-%d %H:%M"), gpu=C.GPU_NOTE)
    fish = pvo.get("methods", {}).get("fish", {})
    s["fish_bytes_vs_ddp"] = fish.get("bytes_ours_over_python")
    fm = [r for r in comm.get("measured", []) if r.get("method") == "fish" and "monitoring_over_ideal" in r]
    s["fish_wire_vs_ideal"] = fm[0]["monitoring_over_ideal"] if fm else None
    s["step_time_python_over_ours"] = {m: r["step_time_python_over_ours"] for m, r in pvo.get("methods", {}).items()}
    s["lst_peak_vs_full"] = mem.get("lst_peak_vs_full")
    if s["lst_peak_vs_full"] is None:
        s["lst_peak_vs_full_note"] = (mem.get("methods", {}).get("lst", {}).get("missing") or
                                      mem.get("methods", {}).get("lst", {}).get("failed") or "not measured")
    t3 = big.get("models", {}).get("t5-3b", {})
    s["t5_3b_step_s"] = t3.get("step_s")
    s["t5_3b_peak_rss_gb"] = max(t3["peak_rss"]) / 1e9 if "peak_rss" in t3 else None
    if "peak_rss" in t3:
        s["t5_3b_ranks"] = t3["ranks"]
        s["t5_3b_measured_at"] = t3.get("measured_at")
    else:
        s["t5_3b_note"] = t3.get("not_run") or t3.get("failed") or "not run (bench/run-all without --quick runs it)"
    tl = big.get("models", {}).get("t5-large", {})
    if "peak_rss" in tl:
        s["t5_large_step_s"] = tl["step_s"]
        s["t5_large_peak_rss_gb"] = max(tl["peak_rss"]) / 1e9
        s["t5_large_ranks"] = tl["ranks"]
    s["sst2_accuracy"] = {m: ({"mean": r["mean"], "std": r["std"], "seeds": len(r["accuracies"])} if "mean" in r
                              else None) for m, r in acc.get("methods", {}).items()}
    s["sst2_steps"] = acc.get("steps")
    real = load("real_accuracy.quick.json" if mode == "quick" else "real_accuracy.json")
    if real:
        s["real_model"] = {k: real["model"][k] for k in ("name", "package", "sha256", "params")}
        s["real_accuracy"] = {t: {m: ({"mean": r["mean"], "std": r["std"], "seeds": r["seeds"]} if "mean" in r else None)
                                  for m, r in ms.items()} for t, ms in real["table"].items()}
        s["real_accuracy_metric"] = {t: spec["metric"] for t, spec in real["tasks"].items()}
        s["real_accuracy_steps"] = real["steps"]
    net = load("network.quick.json" if mode == "quick" else "network.json")
    if net.get("rows"):
        # issue 15's goals: FISH 0.5% near its no-network time at 1 Gbit/s while full fine-tuning is slowed many times,
        # and the alpha-beta prediction within 15% of the measured step
        rows = net["rows"]
        slowdown = s["network_slowdown_1gbit"] = {}
        for r in rows:  # rows the memory guard skipped carry "failed" and no slowdown
            if r["link"] == "1gbit" and r["method"] in ("full", "fish") and "slowdown_vs_no_network" in r:
                slowdown.setdefault(f'{r["model"]}/{r["hosts"]} hosts', {})[r["method"]] = r["slowdown_vs_no_network"]
        predicted = [r for r in rows if r.get("predicted_over_measured") is not None]
        s["network_predicted_within_15pct"] = [sum(abs(r["predicted_over_measured"] - 1) <= 0.15 for r in predicted),
                                               len(predicted)]
    s["acceptance"] = dict(fish_bytes_vs_ddp_le_0_006=(s["fish_bytes_vs_ddp"] or 1) <= 0.006,
                           fish_wire_vs_ideal_le_1_02=(s["fish_wire_vs_ideal"] or 9) <= 1.02)
    C.write_json("summary.json", s)
    print(json.dumps(s, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
