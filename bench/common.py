"""bench/common.py — shared helpers of the benchmark scripts (bench/run-all runs them all).

Every script records the exact shell commands it ran (results/<part>.commands.txt), so each figure in
bench/results/ comes from a command one can paste. Timings are taken side by side in one run on the
shared 2-core machine; nothing is hard-coded.
"""
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
RESULTS = os.path.join(BENCH, "results")
CACHE = os.path.join(BENCH, ".cache")          # ignored: generated weights, masks, scratch files
BIN = os.environ.get("DELTATUNE", os.path.join(ROOT, "build", "deltatune"))
PY = sys.executable                           # the project venv (torch 2.11, the same ATen as our libtorch)
STORIES = "data/stories260K/stories260K.bin"
TOK = "data/stories260K/tok512.bin"
T5_TOK = "data/tokenizers/t5-spiece.model"
GPU_NOTE = ("No GPU on this machine: CPU numbers (torch 2.11's CUDA libtorch running on the CPU); GPU rows: "
            "bench/results/gpu.md.")

os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
os.makedirs(RESULTS, exist_ok=True)
os.makedirs(CACHE, exist_ok=True)


def rel(path):
    return os.path.relpath(path, ROOT)


def mpirun(np_, monitor=None, bind=True, env=()):
    """The mpirun prefix: np ranks, core binding for timing runs (bind=False: unbound, the rank may use
    every core; mpirun's own default would bind it to one), optional Open MPI monitoring."""
    cmd = ["mpirun", "-np", str(np_), "--oversubscribe", "--bind-to", "core" if bind else "none"]
    if monitor:
        # No `--mca pml ob1`: it would turn the monitoring PML off.
        cmd += ["--mca", "pml_monitoring_enable", "2", "--mca", "pml_monitoring_enable_output", "3",
                "--mca", "pml_monitoring_filename", monitor]
    for e in env:
        cmd += ["-x", e]
    return cmd


def rss_wrap(prefix):
    """Per-rank peak RSS: bench/rss_wrap.py runs the rank's process and writes its VmHWM."""
    return [PY, rel(os.path.join(BENCH, "rss_wrap.py")), prefix]


def shell_text(cmd):
    """A command as one shell line, each argument quoted where it needs it."""
    return " ".join(shlex.quote(c) for c in cmd)


def recorded_command(cmd):
    """A run's command as a runs file records it: one shell line, the binary relative to the repository root."""
    return shell_text(cmd).replace(BIN, rel(BIN))


class Log:
    """Collects the commands a part ran, with wall time and exit code."""

    def __init__(self, part):
        self.part = part
        self.lines = []

    def run(self, cmd, check=True, timeout=None, quiet=False):
        text = shell_text(cmd)
        print(f"[bench:{self.part}] $ {text}", flush=True)
        t0 = time.time()
        # Own process group, so a timeout ends the launcher and every rank it started (and nothing else).
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
        try:
            out, _ = p.communicate(timeout=timeout)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            out, _ = p.communicate()
            rc = 124
        dt = time.time() - t0
        self.lines.append(f"# rc={rc} wall={dt:.1f}s\n{text}")
        if rc != 0 and not quiet:
            print(out[-3000:], file=sys.stderr)
        if check and rc != 0:
            raise RuntimeError(f"command failed (rc {rc}): {text}")
        return rc, out

    def save(self):
        with open(os.path.join(RESULTS, f"{self.part}.commands.txt"), "w") as f:
            f.write("# commands run by bench/" + self.part + " (from the repository root)\n")
            f.write("\n".join(self.lines) + "\n")


def save_run_commands(part, script, runs, label, outcome):
    """results/<part>.commands.txt from the runs file: the table of a resumable harness fills over several
    invocations (and one that only rebuilds the table runs nothing), so an invocation's own log would lose the
    earlier runs. Per run: "# <label(r)>: <outcome(r), or failed: why>" and its command."""
    with open(os.path.join(RESULTS, part + ".commands.txt"), "w") as f:
        f.write(f"# commands of every recorded run of {script} (from the repository root), as in {part}.runs.jsonl\n")
        for r in runs:
            said = f"failed: {r['failed']}" if "failed" in r else outcome(r)
            f.write(f"# {label(r)}: {said}\n{r['command']}\n")


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def write_jsonl(path, rows):
    """One JSON object per line, keys sorted: the harnesses' runs files (read back by read_jsonl)."""
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True) + "\n")


def steps_of(metrics):
    return [m for m in metrics if "step_time_s" in m]


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def monitoring_bytes(prefix, np_):
    """Per rank: bytes sent inside collectives (the `I` line of FILE.<rank>.prof, level 2 output)."""
    out = []
    for r in range(np_):
        total = 0
        with open(f"{prefix}.{r}.prof") as f:
            for line in f:
                parts = line.split("\t")
                if parts[0] == "I":
                    total += int(parts[3].split()[0])
        out.append(total)
    return out


def read_rss(prefix, np_):
    """Peak RSS per rank in bytes, as bench/rss_wrap.py wrote them."""
    vals = []
    for r in range(np_):
        with open(f"{prefix}.{r}.rss") as f:
            vals.append(int(f.read().split()[0]))
    return vals


def clean(prefix):
    d = os.path.dirname(prefix) or "."
    base = os.path.basename(prefix)
    for n in os.listdir(d):
        if n.startswith(base + "."):
            os.remove(os.path.join(d, n))


def plan(model, method, extra=()):
    cmd = [BIN, "plan", *extra, "--model", model, "--method", method, "--json"]
    p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        return None, p.stderr.strip()
    return json.loads(p.stdout), None


def method_known(method):
    """False (and the message) when this binary does not know the method yet (e.g. LST in flight)."""
    p = subprocess.run([BIN, "plan", "--method", method, "--json"], cwd=ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    if p.returncode != 0 and "unknown --method" in p.stderr:
        return False, p.stderr.strip()
    return True, ""


def mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def fmt_int(x):
    return f"{x:,}" if isinstance(x, int) else ("–" if x is None else str(x))


def md_table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out) + "\n"


def write_json(name, obj):
    with open(os.path.join(RESULTS, name), "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")


def machine_note(binary=None):
    load = os.getloadavg()
    binary = binary or (rel(BIN) if BIN.startswith(ROOT) else BIN)
    return (f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} CPU cores shared with other "
            f"jobs (load average at the end {load[0]:.1f}); binary {binary}. " + GPU_NOTE)


def fish_mask(log, samples, keep=0.005, model=STORIES, tokenizer=TOK, name="stories260K"):
    """A FISH mask of `model` on SST-2 (distributed Fisher, 2 ranks), computed once and cached, so
    the measured runs carry only the training traffic (the Fisher's one dense all-reduce is start-up)."""
    path = os.path.join(CACHE, f"fish_{name}_keep{keep}_s{samples}.safetensors")
    if not os.path.exists(path):
        log.run(mpirun(2) + [BIN, "mask", "--model", model, "--tokenizer", tokenizer, "--task", "sst2",
                             "--fish.keep", str(keep), "--fish.samples", str(samples), "--out", rel(path)])
    return rel(path)


def method_options(config):
    """A config file's method sections as plan options (plan takes no [train]/[dist] options)."""
    import configparser
    cp = configparser.ConfigParser()
    with open(os.path.join(ROOT, config)) as f:
        cp.read_string("[top]\n" + f.read())
    out = []
    for sec in cp.sections():
        if sec in ("top", "train", "dist", "ckpt"):
            continue
        for k, v in cp.items(sec):
            out += [f"--{sec}.{k}", v]
    return out


def torch_version():
    """The version of the python side's torch (the venv's), as the tables name it."""
    return subprocess.check_output([PY, "-c", "import torch; print(torch.__version__)"], text=True).strip()
