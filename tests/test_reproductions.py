"""scripts/reproductions.py: the verdict of a claim follows the paired interval and the protocol's minimums."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("reproductions", Path(__file__).resolve().parent.parent / "scripts" / "reproductions.py")
reproductions = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reproductions)


def test_verdict_reads_the_interval_in_the_claimed_direction():
    above, below, straddles = {"ci_low": 0.01, "ci_high": 0.05}, {"ci_low": -0.05, "ci_high": -0.01}, {"ci_low": -0.01, "ci_high": 0.02}
    verdict = reproductions.verdict
    assert verdict(above, "test_accuracy", 3, 50) == "reproduced"
    assert verdict(below, "test_accuracy", 3, 50).startswith("not reproduced")
    assert verdict(straddles, "test_accuracy", 5, 50).startswith("inconclusive")
    assert verdict(below, "update_dissimilarity", 3, 50) == "reproduced"  # lower is the claimed direction
    assert verdict(above, "test_accuracy", 2, 50).startswith("incomplete")
    assert verdict(above, "test_accuracy", 3, 30).startswith("incomplete")


def test_committed_page_is_what_render_writes(tmp_path, monkeypatch):
    """docs/REPRODUCTIONS.md is generated: rendering the committed outputs again changes nothing."""
    root = Path(__file__).resolve().parent.parent
    before = (root / "docs" / "REPRODUCTIONS.md").read_text()
    readme = (root / "README.md").read_text()
    try:
        reproductions.render()
        assert (root / "docs" / "REPRODUCTIONS.md").read_text() == before
        assert (root / "README.md").read_text() == readme
    finally:
        (root / "docs" / "REPRODUCTIONS.md").write_text(before)
        (root / "README.md").write_text(readme)


def test_a_claimed_group_is_matched_on_the_keys_that_vary_and_the_values_the_runs_have():
    import pandas as pd

    groups = ["strategy=fedavg", "strategy=twinsight"]  # np_weight does not vary: only the twinsight runs have it
    configs = pd.DataFrame({"strategy.name": ["fedavg", "twinsight"], "strategy.np_weight": [None, 1.0]})
    match = reproductions.matching_group
    assert match(["strategy=twinsight", "strategy.np_weight=1.0"], groups, configs) == "strategy=twinsight"
    assert match(["strategy=twinsight", "strategy.np_weight=0.015625"], groups, configs) is None  # its runs are not there
    both = ["strategy=twinsight, strategy.np_weight=0.015625", "strategy=twinsight, strategy.np_weight=1.0"]
    assert match(["strategy=twinsight", "strategy.np_weight=1.0"], both, configs) == both[1]
