#!/usr/bin/env python3
"""bench/fuzz.py — libFuzzer on every parser of untrusted bytes, then the whole ctest suite under ASan + UBSan.

  bench/fuzz.py [--seconds 60] [--targets safetensors,...] [--no-tests] [--no-fuzz] [--tests REGEX] [--exclude REGEX]
                [--rerun-failed] [--jobs N]

Builds build-san/ (clang, -DDELTATUNE_FUZZ=ON: every library and test compiled with
-fsanitize=address,undefined and libFuzzer's coverage; NCCL off, it cannot run here), then:
  1. runs each target of fuzz/ for --seconds, from seeds made of the bundled files (data/, configs/, the
     MiniLM header) plus the corpus earlier runs grew (bench/.cache/fuzz/<target>/corpus); an input that
     crashes, trips a sanitizer or leaves a parser by any exception but a dt::Error naming the file is
     saved as bench/.cache/fuzz/<target>/crash-* (libFuzzer stops that target at its first finding);
  2. runs ctest in build-san/ with the sanitizers reporting to files (LeakSanitizer with fuzz/lsan.supp:
     leaks inside Open MPI, torch, HDF5 and Python are theirs; fuzz/keep_modules.cpp keeps their
     components mapped so the suppressions can name them), counting tests, failures and reports;
     --rerun-failed reruns only the tests the recorded suite failed or got reports from (after fixes), minus
     --exclude; with --no-fuzz it builds only the binaries those tests need.
Results: bench/results/fuzz.json {targets: {name: {runs, seconds, crashes, artifacts}}, sanitizer: {tests,
failures, failed, timed_out, timeout_scale, reports}} and fuzz.md. In build-san/ every test's ctest limit is x8
(DELTATUNE_TEST_TIMEOUT_SCALE). Not part of .ci/run: the sanitizer build and suite take about
an hour here (scripts/setup.sh fuzz runs this).
"""
import argparse
import glob
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

BUILD = os.path.join(C.ROOT, "build-san")
WORK = os.path.join(C.CACHE, "fuzz")
TARGETS = ["safetensors", "llama2c", "tokenizer", "glue", "config", "checkpoint", "index_codec"]
# Every test's ctest limit times this in build-san/ (tests/CMakeLists.txt DELTATUNE_TEST_TIMEOUT_SCALE): the
# script tests run deltatune dozens of times, each many times slower under the sanitizers.
TIMEOUT_SCALE = 8
MAX_LEN = {"tokenizer": 16384}  # its seeds are whole (small) tokenizer files; 4096 bytes for the others
GLUE_TASKS = ["sst2", "cola", "rte"]  # dist::glue_task_names() order: the glue target's first byte picks one


def rerun_targets(test_names):
    """The build targets a rerun of these ctest names needs: a test_* binary per test (its _npN variants run the same
    binary), deltatune for the script tests, and the LD_PRELOAD library the suite runs with."""
    targets = {"dt_keep_modules"}
    for name in test_names:
        base = re.sub(r"_np[0-9]+$", "", name)
        targets.add(base if base.startswith("test_") else "deltatune")
    return sorted(targets)


def configure_and_build(log, jobs, fuzz_only, only_targets=None):
    if not os.path.exists(os.path.join(BUILD, "build.ninja")):
        log.run(["cmake", "-S", ".", "-B", C.rel(BUILD), "-G", "Ninja", "-DCMAKE_C_COMPILER=clang",
                 "-DCMAKE_CXX_COMPILER=clang++", "-DCMAKE_BUILD_TYPE=RelWithDebInfo", "-DDELTATUNE_FUZZ=ON",
                 "-DDELTATUNE_NCCL=OFF", f"-DDELTATUNE_PYTHON={C.ROOT}/.venv/bin/python",
                 f"-DDELTATUNE_TEST_TIMEOUT_SCALE={TIMEOUT_SCALE}"])
    else:  # an older build-san/ gets the scaled limits too
        log.run(["cmake", C.rel(BUILD), f"-DDELTATUNE_TEST_TIMEOUT_SCALE={TIMEOUT_SCALE}"])
    # --no-tests builds the fuzz targets alone (minutes); the suite needs every test binary (most of an hour)
    targets = ["--target"] + [f"fuzz_{t}" for t in TARGETS] if fuzz_only else []
    if only_targets:  # --rerun-failed: what the rerun's tests need, not every test binary
        targets = ["--target"] + list(only_targets)
    log.run(["cmake", "--build", C.rel(BUILD), "-j", str(jobs)] + targets, timeout=4 * 3600)


def write_seeds(target, seeds):
    """Seed inputs from the bundled files (regenerated each run; the grown corpus is kept apart)."""
    shutil.rmtree(seeds, ignore_errors=True)
    os.makedirs(seeds)
    files = {}

    def read(path, limit=None):
        with open(os.path.join(C.ROOT, path), "rb") as f:
            return f.read(limit) if limit else f.read()

    if target == "safetensors":
        header = json.dumps({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                             "b": {"dtype": "BF16", "shape": [4], "data_offsets": [24, 32]},
                             "__metadata__": {"format": "pt"}}).encode()
        header += b" " * (-len(header) % 8)
        files["small"] = struct.pack("<Q", len(header)) + header + bytes(32)
        real = os.path.join("models", "all-minilm-l6-v2", "model.safetensors")
        if os.path.exists(os.path.join(C.ROOT, real)):  # the real header, its data cut off
            n = struct.unpack("<Q", read(real, 8))[0]
            files["minilm-header"] = read(real, 8 + n)
    elif target == "llama2c":
        dim, hidden, layers, heads, kv, vocab, seq = 4, 8, 1, 2, 2, 8, 4
        hd = dim // heads
        floats = (vocab * dim + layers * (2 * dim + 2 * dim * dim + 2 * dim * kv * hd + 3 * dim * hidden)
                  + dim + seq * hd)
        files["tiny"] = struct.pack("<7i", dim, hidden, layers, heads, kv, vocab, seq) + bytes(4 * floats)
        files["stories260K-head"] = read("data/stories260K/stories260K.bin", 4096)
    elif target == "tokenizer":
        files["wordpiece"] = b"\x00" + b"".join(read("data/tokenizers/bert-base-uncased-vocab.txt").splitlines(True)[:1200])
        files["bpe"] = b"\x01" + read("data/stories260K/tok512.bin")
        files["sentencepiece"] = b"\x02" + read("data/stories260K/tok512.model")
    elif target == "glue":
        for i, (task, folder) in enumerate([("cola", "CoLA"), ("rte", "RTE"), ("sst2", "SST-2")]):
            lines = read(f"data/glue/{folder}/train.tsv").splitlines(True)[:30]
            files[task] = bytes([GLUE_TASKS.index(task)]) + b"".join(lines)
    elif target == "config":
        for path in sorted(glob.glob(os.path.join(C.ROOT, "configs", "*.ini"))):
            files[os.path.basename(path)] = read(path)
    elif target == "checkpoint":
        files["unedited"] = b""
        files["edits"] = bytes(range(64))
    elif target == "index_codec":
        def header(enc, width, count, numel):
            return struct.pack("<BBQQ", enc, width, count, numel)
        files["delta"] = header(0, 1, 3, 100) + bytes([1, 4, 4])
        files["delta8"] = header(0, 8, 2, 1 << 40) + struct.pack("<QQ", 5, 1 << 33)
        files["bitmap"] = header(1, 1, 3, 16) + bytes([0b10010010, 0])
    for name, data in files.items():
        with open(os.path.join(seeds, name), "wb") as f:
            f.write(data)


def fuzz(log, target, seconds):
    work = os.path.join(WORK, target)
    corpus, seeds = os.path.join(work, "corpus"), os.path.join(work, "seeds")
    os.makedirs(corpus, exist_ok=True)
    write_seeds(target, seeds)
    before = set(glob.glob(os.path.join(work, "crash-*")) + glob.glob(os.path.join(work, "leak-*")) +
                 glob.glob(os.path.join(work, "timeout-*")) + glob.glob(os.path.join(work, "oom-*")))
    binary = os.path.join(BUILD, "fuzz", f"fuzz_{target}")
    t0 = time.time()
    rc, out = log.run([C.rel(binary), f"-max_total_time={seconds}", "-print_final_stats=1", "-timeout=20",
                       "-rss_limit_mb=4096", f"-max_len={MAX_LEN.get(target, 4096)}",
                       f"-artifact_prefix={C.rel(work)}/", C.rel(corpus), C.rel(seeds)],
                      check=False, timeout=seconds + 600, quiet=True)
    elapsed = time.time() - t0
    with open(os.path.join(work, "last.log"), "w") as f:
        f.write(out)
    after = set(glob.glob(os.path.join(work, "crash-*")) + glob.glob(os.path.join(work, "leak-*")) +
                glob.glob(os.path.join(work, "timeout-*")) + glob.glob(os.path.join(work, "oom-*")))
    new = sorted(after - before)
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", out)
    finding = ""
    for line in out.splitlines():
        if "ERROR: AddressSanitizer" in line or "runtime error:" in line or line.startswith("fuzz: ") \
                or "ERROR: libFuzzer" in line or "ERROR: LeakSanitizer" in line:
            finding = line.strip()
            break
    result = dict(runs=int(runs[-1]) if runs else 0, seconds=round(elapsed, 1), crashes=len(new),
                  artifacts=[C.rel(p) for p in new], corpus=len(os.listdir(corpus)), rc=rc)
    if finding or (rc != 0 and not new):
        result["finding"] = finding or f"exit code {rc} (bench/.cache/fuzz/{target}/last.log)"
    print(f"[bench:fuzz] {target}: {result['runs']} runs in {elapsed:.0f} s, {len(new)} crash(es)"
          + (f": {finding}" if finding else ""), flush=True)
    return result


def read_reports(logs):
    """(report lines, the executables they came from) of the sanitizer log files in `logs`."""
    reports, binaries = [], set()
    for path in sorted(glob.glob(os.path.join(logs, "*"))):
        text = open(path, errors="replace").read()
        for line in text.splitlines():
            if "ERROR: AddressSanitizer" in line or "ERROR: LeakSanitizer" in line or "runtime error:" in line:
                # the executable the report came from: the first of ours in its stack
                ours = re.search(r"build-san/(?:tests|fuzz)/([A-Za-z0-9_]+)|build-san/(deltatune)\b", text)
                binary = (ours.group(1) or ours.group(2)) if ours else "?"
                binaries.add(binary)
                reports.append(f"{binary} ({os.path.basename(path)}): {line.strip()[:300]}")
                break
    return reports, sorted(binaries)


def sanitizer_suite(log, tests_regex, exclude_regex, jobs, logs_name="sanitizer-logs"):
    logs = os.path.join(WORK, logs_name)
    shutil.rmtree(logs, ignore_errors=True)
    os.makedirs(logs)
    supp = os.path.join(C.ROOT, "fuzz", "lsan.supp")
    env = dict(os.environ,
               ASAN_OPTIONS=f"log_path={logs}/asan:detect_leaks=1:abort_on_error=1",
               UBSAN_OPTIONS=f"log_path={logs}/ubsan:print_stacktrace=1:halt_on_error=1",
               LSAN_OPTIONS=f"suppressions={supp}:print_suppressions=0",
               # dlclose does nothing (fuzz/keep_modules.cpp): Open MPI's components stay mapped until the
               # leak check, so their frames have names the suppressions match
               LD_PRELOAD=os.path.join(BUILD, "fuzz", "libdt_keep_modules.so"),
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    junit = os.path.join(WORK, "ctest.xml")
    cmd = ["ctest", "--test-dir", C.rel(BUILD), "-j", str(jobs), "--output-junit", junit]
    if tests_regex:
        cmd += ["-R", tests_regex]
    if exclude_regex:
        cmd += ["-E", exclude_regex]
    print(f"[bench:fuzz] $ {' '.join(cmd)}", flush=True)
    t0 = time.time()
    p = subprocess.run(cmd, cwd=C.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log.lines.append(f"# rc={p.returncode} wall={time.time() - t0:.1f}s (with ASAN_OPTIONS, UBSAN_OPTIONS, "
                     f"LSAN_OPTIONS as bench/fuzz.py sets them)\n{' '.join(cmd)}")
    with open(os.path.join(WORK, "ctest.log"), "w") as f:
        f.write(p.stdout)
    tests, failed, skipped = 0, [], 0
    root = ET.parse(junit).getroot()
    for case in root.iter("testcase"):
        status = case.get("status", "")
        if status in ("disabled", "notrun") or case.find("skipped") is not None:
            skipped += 1
            continue
        tests += 1
        if case.find("failure") is not None or status == "fail":
            failed.append(case.get("name"))
    # The junit file does not tell a timeout from a failure; ctest's own lines do ("***Timeout").
    timed_out = [m.group(1) for m in re.finditer(r"Test\s+#\d+: (\S+) \.*\s*\*\*\*Timeout", p.stdout)]
    reports, binaries = read_reports(logs)
    return dict(measured_at=time.strftime("%Y-%m-%d %H:%M"), tests=tests, failures=len(failed), failed=failed,
                timed_out=timed_out, timeout_scale=TIMEOUT_SCALE,
                skipped=skipped, reports=len(reports),
                report_lines=reports, report_binaries=binaries, seconds=round(time.time() - t0, 1),
                ctest_rc=p.returncode)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=60, help="per fuzz target")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--no-tests", action="store_true", help="fuzz only (keep the recorded sanitizer results)")
    ap.add_argument("--no-fuzz", action="store_true", help="the sanitizer suite only (keep the fuzz results)")
    ap.add_argument("--tests", default="", help="ctest -R regex (default: every test)")
    ap.add_argument("--exclude", default="", help="ctest -E regex: tests left out (recorded in fuzz.json)")
    ap.add_argument("--rerun-failed", action="store_true",
                    help="after fixes: rerun only the tests the recorded suite failed or got reports from; the "
                         "full run stays recorded, this one is added as sanitizer_rerun")
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    a = ap.parse_args()
    for t in a.targets.split(","):
        if t not in TARGETS:
            sys.exit(f"bench/fuzz.py: unknown target '{t}' ({', '.join(TARGETS)})")
    os.makedirs(WORK, exist_ok=True)
    log = C.Log("fuzz")
    previous = {}
    path = os.path.join(C.RESULTS, "fuzz.json")
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
    sanitizer, rerun = previous.get("sanitizer"), previous.get("sanitizer_rerun")
    if a.rerun_failed:
        if not sanitizer:
            sys.exit("bench/fuzz.py --rerun-failed: no recorded sanitizer suite to rerun from")
        binaries = sanitizer.get("report_binaries") or read_reports(os.path.join(WORK, "sanitizer-logs"))[1]
        rerun_names = [t for t in dict.fromkeys(sanitizer["failed"] + [b for b in binaries if b not in ("?", "deltatune")])
                       if not (a.exclude and re.search(a.exclude, t))]
        if not rerun_names:
            sys.exit("bench/fuzz.py --rerun-failed: the recorded suite had no failures or reports (left after "
                     "--exclude)")
    configure_and_build(log, a.jobs, a.no_tests, rerun_targets(rerun_names) if a.rerun_failed and a.no_fuzz else None)
    targets = dict(previous.get("targets", {}))
    if not a.no_fuzz:
        for t in a.targets.split(","):
            targets[t] = fuzz(log, t, a.seconds)
    if a.rerun_failed:
        names = [f"^{t}(_np[0-9]+)?$" for t in rerun_names]
        rerun = sanitizer_suite(log, "|".join(names), a.exclude, a.jobs, "sanitizer-logs-rerun")
        rerun["tests_regex"] = "|".join(names)
        rerun["excluded_regex"] = a.exclude
    elif not a.no_tests:
        sanitizer = sanitizer_suite(log, a.tests, a.exclude, a.jobs)
        sanitizer["tests_regex"] = a.tests or "(all)"
        sanitizer["excluded_regex"] = a.exclude
        rerun = None
    out = dict(targets=targets, sanitizer=sanitizer, sanitizer_rerun=rerun, seconds_per_target=a.seconds,
               compiler=subprocess.run(["clang++", "--version"], capture_output=True, text=True).stdout.split("\n")[0],
               note=C.machine_note("the sanitizer build in build-san/"))
    C.write_json("fuzz.json", out)
    log.save()

    rows = [[f"`{t}`", C.fmt_int(r["runs"]), r["seconds"], r["crashes"], r.get("corpus", "–"),
             r.get("finding", "")[:120] or "–"] for t, r in sorted(targets.items())]
    with open(os.path.join(C.RESULTS, "fuzz.md"), "w") as f:
        f.write("### Fuzzing (libFuzzer, clang, ASan + UBSan) and the test suite under sanitizers\n\n")
        f.write(C.md_table(["target", "runs", "seconds", "crashes", "corpus", "finding"], rows))
        for title, suite in (("ctest under ASan + UBSan (+ LeakSanitizer, fuzz/lsan.supp)", sanitizer),
                             ("Rerun after the fixes", rerun)):
            if not suite:
                continue
            f.write(f"\n{title}, tests {suite['tests_regex']}"
                    f"{' except ' + suite['excluded_regex'] if suite.get('excluded_regex') else ''}: "
                    f"{suite['tests']} tests, {suite['failures']} failed"
                    f"{' (' + ', '.join(suite['failed']) + ')' if suite['failed'] else ''}"
                    f"{' of which timed out: ' + ', '.join(suite['timed_out']) if suite.get('timed_out') else ''}"
                    f"{' (limits x' + str(suite['timeout_scale']) + ')' if suite.get('timeout_scale') else ''}, "
                    f"{suite['reports']} sanitizer reports, {suite['skipped']} skipped, {suite['seconds']:.0f} s"
                    f"{', measured ' + suite['measured_at'] if suite.get('measured_at') else ''}.\n")
            for r in suite["report_lines"]:
                f.write(f"- {r}\n")
        f.write("\n" + C.machine_note("the sanitizer build in build-san/") + "\n")
    last = rerun if a.rerun_failed else sanitizer
    bad = sum(r["crashes"] for r in targets.values()) + (last["failures"] + last["reports"] if last else 0)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
