"""Shared by the reproduction scripts: run `python -m fedsim run` and read back what it wrote."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from fedsim.data import load_dataset
from fedsim.errors import DataError


def datasets_available(data_root: str) -> list[str]:
    """Fashion-MNIST (offline default), plus CIFAR-10 when its files are under ``data_root``."""
    try:
        load_dataset("cifar10", data_root, False)
        return ["fashion_mnist", "cifar10"]
    except DataError:
        print(f"CIFAR-10 not found under {data_root}: Fashion-MNIST only")
        return ["fashion_mnist"]


def run_fedsim(overrides: list[str], runs_root: str, name: str) -> dict:
    """Run one configuration (or finish/reuse the run already in ``runs_root/name``); returns
    summary.json plus 'metrics' (per-round records) and
    bytes including a strategy's setup phase (FedFed's distillation and sharing)."""
    run_dir = Path(runs_root) / name
    if (run_dir / "config.yaml").is_file():  # an earlier (possibly interrupted) run: finish it
        print(f"resuming {name} ...", flush=True)
        rounds = [o for o in overrides if o.startswith("num_rounds=")]
        command = ["run", f"resume={run_dir}", *rounds]
    else:
        print(f"running {name} ...", flush=True)
        command = ["run", *overrides, f"run_dir={run_dir}"]
    out = subprocess.run([sys.executable, "-m", "fedsim", *command], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["metrics"] = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    setup_log = run_dir / "distill_metrics.jsonl"
    if setup_log.exists():
        for record in map(json.loads, setup_log.read_text().splitlines()):
            summary["bytes_down"] += record.get("bytes_down", 0)
            summary["bytes_up"] += record.get("bytes_up", sum(record.get("upload_bytes_per_client", {}).values()))
    return summary


def late_mean(summary: dict) -> float:
    """Mean test accuracy over the second half of the rounds: less noisy than the last round's."""
    evaluated = [r["test_accuracy"] for r in summary["metrics"] if "test_accuracy" in r]
    return sum(evaluated[len(evaluated) // 2 :]) / max(len(evaluated[len(evaluated) // 2 :]), 1)


def repro_parser(doc: str) -> argparse.ArgumentParser:
    """The options every reproduction takes."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.1, help="Dirichlet alpha of the partition")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default="./data")
    parser.add_argument("--runs-root", default=None, help="keep the run directories here (default: a temp dir)")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every run, e.g. backend=inprocess")
    return parser


def common_setup(args: argparse.Namespace, name: str) -> tuple[str, list[str]]:
    """(runs root, overrides shared by every run: 10 clients, Dirichlet(alpha), CNN, seed, rounds)."""
    runs_root = args.runs_root or tempfile.mkdtemp(prefix=f"repro_{name}_")
    overrides = [
        f"num_rounds={args.rounds}",
        "num_clients=10",
        "partition=dirichlet",
        f"partition.alpha={args.alpha}",
        f"seed={args.seed}",
        f"data_root={args.data_root}",
        "model=cnn",
        *args.extra,
    ]
    return runs_root, overrides


def attack_fedsim(overrides: list[str], out_dir: Path) -> dict:
    """Run `python -m fedsim attack` with ``overrides`` (or reuse its summary); returns the mean scores."""
    summary = Path(out_dir) / "summary.json"
    if not summary.is_file():
        proc = subprocess.run(
            [sys.executable, "-m", "fedsim", "attack", *overrides, f"out_dir={out_dir}"], capture_output=True, text=True
        )
        if proc.returncode != 0:
            sys.exit(f"attack failed:\n{proc.stderr[-3000:]}")
    return json.loads(summary.read_text())["mean"]
