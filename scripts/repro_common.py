"""Shared by the reproduction scripts: run `python -m fedsim run` and read back what it wrote."""

from __future__ import annotations

import json
import subprocess
import sys
import time
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
    """Run one configuration; returns summary.json plus 'wall_s', 'metrics' (per-round records) and
    bytes including a strategy's setup phase (FedFed's distillation and sharing)."""
    run_dir = Path(runs_root) / name
    print(f"running {name} ...", flush=True)
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "fedsim", "run", *overrides, f"run_dir={run_dir}"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["wall_s"] = time.time() - t0
    summary["metrics"] = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    setup_log = run_dir / "distill_metrics.jsonl"
    if setup_log.exists():
        for record in map(json.loads, setup_log.read_text().splitlines()):
            summary["bytes_down"] += record.get("bytes_down", 0)
            summary["bytes_up"] += record.get("bytes_up", sum(record.get("upload_bytes_per_client", {}).values()))
    return summary
