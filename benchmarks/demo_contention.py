"""Wall time of the demo on an idle machine and beside one busy process, for this checkout and,
optionally, another one (e.g. a worktree of the code before the demo's worker processes).

Each measurement runs ``python -m lavis_listwise demo`` in a subprocess with the source tree first on
``PYTHONPATH``, a fresh output directory and the demo's data and caption cache already in place
(``--warm-up`` makes them first), so what is timed is training and evaluation. "Busy" starts one
single-threaded Python process spinning on a core before the demo and stops it after: what an
ordinary job beside the demo does. A run past ``--timeout`` seconds is stopped and reported as such.

Time it on an otherwise idle machine:

    git worktree add /tmp/before edc6da6
    .venv/bin/python benchmarks/demo_contention.py --warm-up --other /tmp/before   # full demo
    .venv/bin/python benchmarks/demo_contention.py --quick --other /tmp/before     # quick demo
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
SPIN = "while True:\n    pass\n"


def run_demo(source: Path, quick: bool, busy: bool, timeout: float, extra: list[str]) -> tuple[float, str]:
    """``(seconds, status)`` of one demo run from ``source``; status ``ok``, ``rc N`` or ``stopped``."""
    env = {**os.environ, "PYTHONPATH": str(source), "HF_HUB_OFFLINE": "1"}
    spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if busy else None
    try:
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, "-m", "lavis_listwise", "demo", "--output-dir", out, *extra]
            cmd += ["--quick"] if quick else []
            start = time.perf_counter()
            try:
                done = subprocess.run(
                    cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=source
                )
            except subprocess.TimeoutExpired:
                return time.perf_counter() - start, "stopped"
            seconds = time.perf_counter() - start
            if done.returncode != 0:
                sys.stderr.write(done.stderr[-3000:])
            return seconds, "ok" if done.returncode == 0 else f"rc {done.returncode}"
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the quick demo instead of the full one")
    parser.add_argument("--other", type=Path, default=None, help="another source tree to time the same way")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per run (default: %(default)s)")
    parser.add_argument("--warm-up", action="store_true", help="one untimed run first (data and cache)")
    args = parser.parse_args(argv)

    trees = [("this checkout", HERE)] + ([("other", args.other.resolve())] if args.other else [])
    if args.warm_up:
        run_demo(HERE, args.quick, busy=False, timeout=args.timeout, extra=[])
    demo = "quick demo" if args.quick else "demo"
    print(f"| source | {demo}, idle | beside one busy process | ratio |")
    print("|---|---|---|---|")
    for label, tree in trees:
        idle, s_idle = run_demo(tree, args.quick, busy=False, timeout=args.timeout, extra=[])
        busy, s_busy = run_demo(tree, args.quick, busy=True, timeout=args.timeout, extra=[])
        cell = lambda t, s: f"{t:.0f} s" + ("" if s == "ok" else f" ({s})")  # noqa: E731
        print(
            f"| {label} ({tree}) | {cell(idle, s_idle)} | {cell(busy, s_busy)} | {busy / idle:.2f}x |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
