"""scripts/same_metrics.py: a refactoring's numbers compared run by run, key by key."""

import importlib.util
import json
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "same_metrics", Path(__file__).resolve().parent.parent / "scripts" / "same_metrics.py"
)
same_metrics = importlib.util.module_from_spec(spec)
spec.loader.exec_module(same_metrics)


def write_run(root: Path, name: str, rows: list[dict]) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_changed_metric_is_named_and_times_are_not(tmp_path):
    rows = [{"round": 1, "test_accuracy": 0.5, "round_time_s": 1.0}, {"round": 2, "test_accuracy": 0.6}]
    write_run(tmp_path / "a", "fedavg", rows)
    write_run(tmp_path / "b", "fedavg", [{**rows[0], "round_time_s": 9.0}, rows[1]])
    assert same_metrics.differences(tmp_path / "a", tmp_path / "b") == []
    write_run(tmp_path / "c", "fedavg", [rows[0], {**rows[1], "test_accuracy": 0.6000001}])
    assert same_metrics.differences(tmp_path / "a", tmp_path / "c") == [
        "fedavg round 2: test_accuracy 0.6 != 0.6000001"
    ]
    assert same_metrics.main(["compare", str(tmp_path / "a"), str(tmp_path / "c")]) == 1
    assert same_metrics.main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0


def test_every_strategy_is_a_case():
    names = {p.stem for p in (same_metrics.ROOT / "configs" / "strategy").glob("*.yaml")}
    assert names < set(same_metrics.cases())
