"""How fast the command line starts: ``xmodal --help`` (and every ``xmodal VERB --help``) against
``python -c "import typer"``, measured side by side in one run, plus which heavy libraries each one imported.

    python benchmarks/cli_start.py             # 5 interleaved rounds, median wall time
    python benchmarks/cli_start.py --rounds 9  # steadier on a busy machine

Target (issue #14): ``xmodal --help`` under 1 s on the 2-core development machine, no torch / transformers /
faiss imported by any ``--help``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HEAVY = ("torch", "transformers", "faiss", "numpy", "PIL")
VERBS = ("index", "search", "evaluate", "train", "serve", "encode", "demo")
PROBE = ("import runpy, sys; sys.argv = ['xmodal'] + sys.argv[1:]\n"
         "try:\n    runpy.run_module('xmodal', run_name='__main__')\nexcept SystemExit:\n    pass\n"
         "print('HEAVY=' + ','.join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)")


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    return time.perf_counter() - t0, out.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    probe = PROBE.format(heavy=HEAVY)
    cases = {"python -c 'import typer'": [sys.executable, "-c", "import typer"],
             "xmodal --help": [sys.executable, "-c", probe, "--help"]}
    for verb in VERBS:
        cases[f"xmodal {verb} --help"] = [sys.executable, "-c", probe, verb, "--help"]
    times: dict[str, list[float]] = {k: [] for k in cases}
    heavy: dict[str, str] = {}
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):  # interleaved, so a busy moment hits every case alike
        for label, cmd in cases.items():
            t, err = timed(cmd, env)
            times[label].append(t)
            for line in err.splitlines():
                if line.startswith("HEAVY="):
                    heavy[label] = line[6:] or "-"
    base = statistics.median(times["python -c 'import typer'"])
    cmd = "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    print(f"$ {cmd}")
    print(f"machine: {os.cpu_count()} CPUs, 1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; "
          f"median of {args.rounds} interleaved rounds")
    print()
    print("| command | median s | vs import typer | heavy modules imported |")
    print("|---------|----------|-----------------|------------------------|")
    for label in cases:
        m = statistics.median(times[label])
        print(f"| {label} | {m:.2f} | {m / base:.2f}x | {heavy.get(label, 'n/a')} |")


if __name__ == "__main__":
    main()
