"""Check that a change keeps every algorithm's numbers: tiny seeded runs, compared key by key.

``run`` trains every strategy of ``configs/strategy`` (and central DP, and SCAFFOLD on the simulation
pool) for two rounds on the 8x8 digits set, seeded, from the checkout the script sits in; ``compare``
tells whether two such folders hold the same metrics, round by round and key by key (times excluded).
To check a refactoring, run it from a checkout of the old revision and from the new one:

    git worktree add /tmp/before <old-rev>
    (cd /tmp/before && python scripts/same_metrics.py run /tmp/metrics-before)
    python scripts/same_metrics.py run /tmp/metrics-after
    python scripts/same_metrics.py compare /tmp/metrics-before /tmp/metrics-after   # exit 1 on a difference
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = "dataset=digits model=mlp backend=inprocess num_rounds=2 num_clients=4 clients_per_round=2 seed=3".split()
EXTRA = {"fedsa": ["model=cnn"], "fedfed": ["strategy.distill_rounds=1"]}


def cases() -> dict[str, list[str]]:
    """Run name -> overrides: every strategy in-process, central DP, SCAFFOLD on the simulation pool."""
    names = sorted(p.stem for p in (ROOT / "configs" / "strategy").glob("*.yaml"))
    runs = {name: [*TINY, f"strategy={name}", *EXTRA.get(name, [])] for name in names}
    runs["central_dp"] = [*TINY, "defence=central_dp"]
    runs["scaffold_simulation"] = [*TINY, "strategy=scaffold", "backend=simulation"]
    return runs


def run(out: Path) -> int:
    """Train every case into ``out/<case>`` with this checkout's code; the number of failed runs."""
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for name, overrides in cases().items():
        command = [sys.executable, "-m", "fedsim", "run", *overrides, f"run_dir={out / name}"]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        (out / f"{name}.log").write_text(done.stdout + done.stderr)
        print(f"{name}: {'ok' if done.returncode == 0 else f'failed (exit {done.returncode}, see {name}.log)'}")
        failed += done.returncode != 0
    return failed


def differences(a: Path, b: Path) -> list[str]:
    """Every metric (but times) of the runs under ``a`` that differs from the same run's under ``b``."""
    found = []
    for run_a in sorted(p.parent for p in a.glob("*/metrics.jsonl")):
        file_b = b / run_a.name / "metrics.jsonl"
        if not file_b.is_file():
            found.append(f"{run_a.name}: no such run under {b}")
            continue
        rows_a, rows_b = (
            [json.loads(line) for line in f.read_text().splitlines()] for f in (run_a / "metrics.jsonl", file_b)
        )
        if len(rows_a) != len(rows_b):
            found.append(f"{run_a.name}: {len(rows_a)} rounds against {len(rows_b)}")
        for row_a, row_b in zip(rows_a, rows_b):
            for key in sorted(set(row_a) | set(row_b)):
                if "time" not in key and row_a.get(key) != row_b.get(key):
                    found.append(f"{run_a.name} round {row_a.get('round')}: {key} {row_a.get(key)} != {row_b.get(key)}")
    return found


def main(argv: list[str] | None = None) -> int:
    """``run OUT`` or ``compare A B``; exit 1 where a run failed or a metric differs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run").add_argument("out", type=Path)
    compare = sub.add_parser("compare")
    compare.add_argument("a", type=Path)
    compare.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    if args.command == "run":
        return int(run(args.out) > 0)
    found = differences(args.a, args.b)
    runs = len(list(args.a.glob("*/metrics.jsonl")))
    print("\n".join(found) if found else f"{runs} runs, every metric but times identical")
    return int(bool(found) or runs == 0)


if __name__ == "__main__":
    sys.exit(main())
