"""tests/launch/e2e.py — what the end-to-end test scripts share (export_eval.py, tests/hf/peft_roundtrip.py):
running the deltatune binary, under mpirun for more than one rank, and checks that print and collect failures."""
import os
import subprocess
import sys

ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1")
MPI = ["mpirun", "--oversubscribe", "--bind-to", "none"]
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def run_binary(binary, args, np=1):
    """The binary's run (np > 1: under mpirun); output is printed when it fails other than by a usage error."""
    cmd = (MPI + ["-np", str(np)] if np > 1 else []) + [binary] + args
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    if r.returncode not in (0, 2):
        print(r.stdout[-2000:], r.stderr[-2000:])
    return r


def finish():
    print(f"{len(failures)} failure(s)")
    sys.exit(1 if failures else 0)
