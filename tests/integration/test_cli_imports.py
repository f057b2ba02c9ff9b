"""The command line answers --help and usage errors before importing any heavy library.

torch takes 1-1.5 s to import on the development machines, matplotlib about 0.4 s, numpy
and fabric 0.1-0.2 s each: a typo or a missing file must not wait for any of them. Each
case runs in a fresh interpreter (the modules a process has imported stay imported), and
the check is what `sys.modules` holds afterwards, never a timing (bench/cli_start.py
measures the times).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edgectl.errors import EXIT_CONFIG, EXIT_DATA, EXIT_OK, EXIT_USAGE

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "numpy", "matplotlib", "fabric", "paramiko", "invoke", "PIL", "opacus",
         "scipy", "jsonschema")

HELP = [["--help"], ["train", "--help"], ["plan", "--help"], ["profile", "--help"],
        ["bench", "--help"], ["report", "--help"], ["evaluate", "--help"],
        ["testbed", "up", "--help"], ["shape", "set", "--help"], ["provision", "--help"],
        ["inventory", "check", "--help"], ["hosts", "trust", "--help"], ["runs", "--help"],
        ["models", "show", "--help"]]
USAGE_ERRORS = [
    (["train", "--strategy", "pipa"], EXIT_USAGE),
    (["train", "--strategy", "fl", "--split-point", "2"], EXIT_USAGE),
    (["train", "--strategy", "split", "--microbatches", "4"], EXIT_USAGE),
    (["train", "--optimizer", "adam", "--momentum", "0.5"], EXIT_USAGE),
    (["train", "--rounds", "x"], EXIT_USAGE),
    (["train", "--dataset", "imagenet"], EXIT_USAGE),
    (["train", "--partition", "dirichlet:x"], EXIT_USAGE),
    (["train", "--strategy", "pipar", "--dp"], EXIT_USAGE),
    (["train", "--config", "/nonexistent.yaml"], EXIT_CONFIG),
    (["train", "--inventory", "/nonexistent.yaml"], EXIT_CONFIG),
    (["train", "--plan", "/nonexistent.json"], EXIT_CONFIG),
    (["train", "--init-from", "/nonexistent.safetensors"], EXIT_USAGE),
    (["train", "--resume", "/nonexistent"], EXIT_USAGE),
    (["train", "--data-dir", "/nonexistent"], EXIT_DATA),   # the local fleet's own files
    (["train", "--dataset", "cifar10"], EXIT_DATA),
    (["evaluate", "/nonexistent.safetensors"], EXIT_USAGE),
    (["bench", "/nonexistent.yaml"], EXIT_CONFIG),
    (["bench", "bench/small.yaml", "--figure-format", "gif"], EXIT_USAGE),
    (["report", "/nonexistent"], EXIT_CONFIG),
    (["models", "show", "vgg9"], EXIT_USAGE),
    (["models", "show", "vgg5", "--input", "1x2"], EXIT_USAGE),
    (["plan", "--model", "vgg9"], EXIT_USAGE),
    (["plan", "--save", "/nonexistent/plan.json"], EXIT_USAGE),
    (["profile", "--model", "vgg9"], EXIT_USAGE),
    (["shape", "set", "--up", "fast"], EXIT_USAGE),
    (["hosts", "trust", "nosuch"], EXIT_CONFIG),
    (["provision", "--hosts", "nosuch"], EXIT_CONFIG),
    (["testbed", "up", "BAD!"], EXIT_USAGE),
    (["runs", "--format", "xml"], EXIT_USAGE),
]

# Runs every case of argv (a JSON list of [args, expected code]) in one interpreter and
# prints, per case, its exit code and the heavy libraries it was the first to import.
PROBE = """
import json, sys
from typer.testing import CliRunner
from edgectl.cli import app
heavy, cases, seen = set(json.loads(sys.argv[1])), json.loads(sys.argv[2]), set()
for args, _ in cases:
    code = CliRunner().invoke(app, args).exit_code
    now = {name.split(".")[0] for name in sys.modules} & heavy
    print(json.dumps([args, code, sorted(now - seen)]))
    seen |= now
"""


def first_heavy_imports(cases: list) -> list[tuple[list[str], int, list[str]]]:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(HEAVY), json.dumps(cases)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return [tuple(json.loads(line)) for line in done.stdout.splitlines()]


def test_help_and_usage_errors_import_no_heavy_library():
    """Every help text and usage error in one interpreter: each must exit with its code and
    leave no heavy library imported (a case that does is named, with what it imported)."""
    cases = [[args, EXIT_OK] for args in HELP] + [[args, code] for args, code in USAGE_ERRORS]
    results = first_heavy_imports(cases)
    assert [r for r, c in zip(results, cases, strict=True) if r != (*c, [])] == []


def test_the_console_entry_point_prints_help_without_heavy_imports():
    """`python -m edgectl --help` as a user runs it, read from -X importtime."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "edgectl", "--help"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0 and "train" in done.stdout, done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0]
                for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "typer" in imported and not imported & set(HEAVY)
