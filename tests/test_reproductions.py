"""Claims' verdicts (fedsim.experiments.claims) and scripts/reproductions.py: the verdict of a claim follows the
paired interval and the protocol's minimums; the page is generated; a rerun is checked against it."""

import importlib.util
import json
import shutil
from pathlib import Path

import yaml

from fedsim.experiments import claims
from fedsim.experiments.runs import load_runs

spec = importlib.util.spec_from_file_location(
    "reproductions", Path(__file__).resolve().parent.parent / "scripts" / "reproductions.py"
)
reproductions = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reproductions)


def test_verdict_reads_the_interval_in_the_claimed_direction():
    above, below, straddles = (
        {"ci_low": 0.01, "ci_high": 0.05},
        {"ci_low": -0.05, "ci_high": -0.01},
        {"ci_low": -0.01, "ci_high": 0.02},
    )
    verdict = claims.verdict
    assert verdict(above, False, 3, 50) == "reproduced"
    assert verdict(below, False, 3, 50).startswith("not reproduced")
    assert verdict(straddles, False, 5, 50).startswith("inconclusive")
    assert verdict(below, True, 3, 50) == "reproduced"  # lower is the claimed direction
    assert verdict(above, False, 2, 50).startswith("incomplete")
    assert verdict(above, False, 3, 30).startswith("incomplete")


def test_a_margin_makes_the_claim_no_worse_than_the_margin():
    verdict = claims.verdict
    slightly_worse, much_worse = {"ci_low": -0.008, "ci_high": 0.003}, {"ci_low": -0.05, "ci_high": -0.02}
    assert verdict(slightly_worse, False, 3, 50, margin=0.01) == "reproduced"
    assert verdict(slightly_worse, False, 3, 50).startswith("inconclusive")
    assert verdict(much_worse, False, 3, 50, margin=0.01).startswith("not reproduced")
    assert verdict({"ci_low": -0.02, "ci_high": 0.0}, False, 3, 50, margin=0.01).startswith("inconclusive")


def runs_table(final: dict[str, tuple[str, float, float]]):
    """Runs ``name -> (defence, psnr, reference psnr)``, seed = order, 50 rounds."""
    import pandas as pd

    from fedsim.experiments.runs import RunTable

    configs = pd.DataFrame(
        {"defence.name": [v[0] for v in final.values()], "seed": list(range(len(final)))}, index=list(final)
    )
    rows = [
        {"run": name, "round": 50, "attack_final_psnr": psnr, "attack_final_reference_psnr": ref, "test_accuracy": 0.8}
        for name, (_, psnr, ref) in final.items()
    ]
    return RunTable(configs, pd.DataFrame(rows))


def test_a_level_check_holds_when_the_interval_lies_below_the_margin():
    spec = {
        "runs": ["defence=mjp"],
        "metric": "attack_final_psnr",
        "reference": "attack_final_reference_psnr",
        "margin": 1.0,
        "label": "x",
    }
    at_random = runs_table(
        {"a": ("mjp", 7.1, 7.3), "b": ("mjp", 7.0, 6.9), "c": ("mjp", 7.4, 7.5), "d": ("none", 90.0, 7.0)}
    )
    assert claims.level_check(at_random, spec).decision == "reproduced"
    leaking = runs_table({"a": ("mjp", 12.1, 7.3), "b": ("mjp", 11.0, 6.9), "c": ("mjp", 12.4, 7.5)})
    assert claims.level_check(leaking, spec).decision.startswith("not reproduced")
    two_seeds = runs_table({"a": ("mjp", 7.1, 7.3), "b": ("mjp", 7.0, 6.9)})
    assert claims.level_check(two_seeds, spec).decision.startswith("incomplete")


def test_a_group_table_shows_each_groups_mean_and_spread():
    table = runs_table({"a": ("mjp", 7.0, 7.3), "b": ("mjp", 9.0, 6.9), "c": ("none", 90.0, 7.0)})
    lines = reproductions.group_table(table, {"title": "t", "metrics": ["test_accuracy", "attack_final_psnr"]})
    assert "| defence=mjp | 2 | 80.00 +- 0.00 | 8.00 +- 1.41 |" in lines
    assert any(line.startswith("| defence=none | 1 | 80.00") for line in lines)


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
    match = claims.matching_group
    assert match(["strategy=twinsight", "strategy.np_weight=1.0"], groups, configs) == "strategy=twinsight"
    assert (
        match(["strategy=twinsight", "strategy.np_weight=0.015625"], groups, configs) is None
    )  # its runs are not there
    both = ["strategy=twinsight, strategy.np_weight=0.015625", "strategy=twinsight, strategy.np_weight=1.0"]
    assert match(["strategy=twinsight", "strategy.np_weight=1.0"], both, configs) == both[1]


def test_the_most_specific_group_is_matched():
    import pandas as pd

    groups = ["strategy.selection=random, strategy.teachers.foreign=[5]", "strategy.selection=random"]
    configs = pd.DataFrame({"strategy.selection": ["random", "random"]})
    match = claims.matching_group
    assert match(["strategy.selection=random"], groups, configs) == groups[1]
    assert match(["strategy.selection=random", "strategy.teachers.foreign=[5]"], groups, configs) == groups[0]


def test_a_group_option_that_does_not_vary_is_matched_on_its_name():
    import pandas as pd

    groups = ["strategy=dispfl", "strategy=dpsgd"]  # only Dirichlet runs so far: partition does not vary
    configs = pd.DataFrame({"strategy.name": ["dispfl", "dpsgd"], "partition.name": ["dirichlet", "dirichlet"]})
    match = claims.matching_group
    assert match(["strategy=dispfl", "partition=dirichlet"], groups, configs) == "strategy=dispfl"
    assert match(["strategy=dispfl", "partition=shards"], groups, configs) is None


def test_a_comparison_shows_only_its_settings_runs_and_groups_paired_with_its_baseline():
    import pandas as pd

    from fedsim.experiments.runs import RunTable

    # (strategy, alpha) for seeds 0-2, final accuracy = a per-setting level + a per-strategy gain
    runs = [
        (s, a, seed)
        for s, a in [("fedavg", 0.1), ("fedfed", 0.1), ("fedavg", 0.05), ("fedfed", 0.05)]
        for seed in range(3)
    ] + [("fedprox", 0.1, seed) for seed in range(3)]
    names = [f"{s}-{a}-{seed}" for s, a, seed in runs]
    configs = pd.DataFrame(
        {"strategy.name": [r[0] for r in runs], "partition.alpha": [r[1] for r in runs], "seed": [r[2] for r in runs]},
        index=names,
    )
    level, gain = {0.1: 0.8, 0.05: 0.6}, {"fedavg": 0.0, "fedfed": 0.05, "fedprox": 0.01}
    metrics = pd.DataFrame(
        [
            {"run": n, "round": 50, "test_accuracy": level[a] + gain[s] + 0.001 * seed}
            for n, (s, a, seed) in zip(names, runs)
        ]
    )
    claim = {"metrics": ["test_accuracy"], "compare": "final", "last": 1}
    at_005 = {
        "baseline": ["strategy=fedavg", "partition.alpha=0.05"],
        "better": ["strategy=fedfed", "partition.alpha=0.05"],
        "metric": "test_accuracy",
    }
    outcome = claims.compare(RunTable(configs, metrics), claim, at_005)
    assert outcome.report.num_runs == 6  # the Dirichlet 0.1 runs are another setting: not paired, not shown
    assert outcome.figure.startswith("5.00 ") and outcome.decision == "reproduced"
    assert not outcome.warnings
    against_fedprox = {"baseline": ["strategy=fedprox"], "better": ["strategy=fedfed"], "metric": "test_accuracy"}
    outcome = claims.compare(RunTable(configs, metrics), claim, against_fedprox)
    assert outcome.report.num_runs == 9  # the 0.05 runs have no FedProx run beside them: left out, no warning
    assert outcome.figure.startswith("4.00 ") and not outcome.warnings


COMMITTED = Path(__file__).resolve().parent.parent / "docs" / "reproductions"


def test_check_finds_the_committed_verdicts_on_the_committed_runs(capsys):
    runs = [str(COMMITTED / "repro_scool"), str(COMMITTED / "repro_scool_attention")]
    assert reproductions.main(["check", "e", *runs]) == 0
    out = capsys.readouterr().out
    assert "| yes |" in out and "| NO |" not in out


def test_check_flags_a_rerun_whose_verdict_differs(tmp_path, capsys):
    """SCooL's runs 30 points worse: 'far above FedAvg' turns into not reproduced, and check says so."""
    rerun = tmp_path / "repro_scool"
    shutil.copytree(COMMITTED / "repro_scool", rerun)
    for metrics in rerun.glob("*-strategy_scool/metrics.jsonl"):
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        for row in rows:
            if "test_accuracy" in row:
                row["test_accuracy"] -= 0.3
        metrics.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert reproductions.main(["check", "e", str(rerun)]) == 1
    out = capsys.readouterr().out
    assert "| NO |" in out and "not reproduced" in out


def test_check_names_an_unknown_claim(tmp_path, capsys):
    assert reproductions.main(["check", "z", str(tmp_path)]) == 2
    assert "no claim 'z'" in capsys.readouterr().err


def test_check_says_when_the_runs_decide_none_of_the_claims_comparisons(capsys):
    assert reproductions.main(["check", "e", str(COMMITTED / "repro_fedfed_iid")]) == 2
    assert "none of claim e's comparisons is decided on these runs" in capsys.readouterr().err


def test_the_page_decides_each_kept_rerun_on_the_comparisons_it_covers(tmp_path, monkeypatch):
    kept = COMMITTED / "reruns" / "repro_scool_scarce"
    shutil.copytree(kept, tmp_path / kept.name)
    monkeypatch.setattr(reproductions, "RERUNS", tmp_path)
    claims = yaml.safe_load((COMMITTED / "claims.yaml").read_text())
    section = "\n".join(reproductions.render_reruns(claims))
    assert "### Claim e: `repro_scool_scarce` with seeds 5, 6, 7" in section
    assert "10 samples per client" in section  # the comparisons of repro_scool_scarce
    assert "300 samples per client" not in section  # repro_scool's: not rerun, so not listed
    assert "2 comparisons decided on both" in section
    assert section.count("(n=8) |") == 2  # each also decided on its 5 committed and 3 rerun seeds together


def test_a_claims_rerun_is_decided_on_all_its_experiments_together(tmp_path, monkeypatch):
    """Claim a's method (repro_fedfed) and its bases (repro_fedfed_baselines) are two experiments: a rerun of each
    decides nothing alone (the page leaves it off), and the page decides the claim on both (here the committed runs,
    so every verdict holds)."""
    monkeypatch.setattr(reproductions, "RERUNS", tmp_path)
    claims = yaml.safe_load((COMMITTED / "claims.yaml").read_text())
    (claim_a,) = [claim for claim in claims if claim["id"] == "a"]
    for name in ("repro_fedfed_baselines", "repro_fedfed"):
        alone = reproductions.rerun_rows(claim_a, load_runs([str(COMMITTED / name)]))
        assert all(theirs.verdict_class in reproductions.UNDECIDED for _, theirs, *_ in alone)
    shutil.copytree(COMMITTED / "repro_fedfed_baselines", tmp_path / "repro_fedfed_baselines")
    assert "Claim a" not in "\n".join(reproductions.render_reruns(claims))  # the bases' rerun alone, e.g. under way
    shutil.copytree(COMMITTED / "repro_fedfed", tmp_path / "repro_fedfed")
    section = "\n".join(reproductions.render_reruns(claims))
    seeds = "with seeds 0, 1, 2, 3, 4, 5, 6, 7, 8, 9"
    assert f"### Claim a: `repro_fedfed` {seeds}; `repro_fedfed_baselines` {seeds}" in section
    assert "4 comparisons decided on both, 0 with another verdict." in section  # the four bases at Dirichlet 0.1
    assert section.count("| yes | - |") == 4  # the same seeds as the committed runs: nothing to pool


def copy_seeds(experiment: str, seeds: str, target: Path) -> Path:
    """The committed runs of ``experiment`` whose seed matches the glob class ``seeds`` (e.g. "[0-4]"), copied."""
    for run in (COMMITTED / experiment).glob(f"*-seed_{seeds}-*"):
        shutil.copytree(run, target / experiment / run.name)
    return target / experiment


def test_the_runs_together_are_decided_per_comparison_on_the_seeds_the_two_do_not_share(tmp_path, monkeypatch):
    """Claim a committed on seeds 0-4, rerun at Dirichlet 0.1 with seeds 5-9 and with 100 clients on seeds 0-2 again:
    the Dirichlet 0.1 rows are decided on all ten seeds together, the 100-client row (its seeds repeated) is not."""
    monkeypatch.setattr(reproductions, "DOCS", tmp_path / "docs")
    claims_a = [c for c in yaml.safe_load((COMMITTED / "claims.yaml").read_text()) if c["id"] == "a"]
    for experiment in ("repro_fedfed", "repro_fedfed_baselines", "repro_fedfed_100clients"):
        copy_seeds(experiment, "[0-4]", tmp_path / "docs")
    rerun = [copy_seeds(e, "[5-9]", tmp_path / "rerun") for e in ("repro_fedfed", "repro_fedfed_baselines")]
    rerun.append(copy_seeds("repro_fedfed_100clients", "[0-2]", tmp_path / "rerun"))
    rows = reproductions.rerun_rows(claims_a[0], load_runs([str(r) for r in rerun]))
    decided = {theirs.label: (ours, theirs, pooled) for ours, theirs, pooled, _ in rows if theirs.pairs}
    assert len(decided) == 5  # the four bases at Dirichlet 0.1 and the 100 clients
    for label, (ours, theirs, pooled) in decided.items():
        if "100 clients" in label:
            assert (ours.pairs, theirs.pairs, pooled.verdict_class) == (5, 3, reproductions.NOT_RUN)
        else:
            assert (ours.pairs, theirs.pairs, pooled.pairs) == (5, 5, 10)
            assert "(n=10)" in pooled.figure


def test_the_page_has_no_rerun_section_without_reruns(tmp_path, monkeypatch):
    monkeypatch.setattr(reproductions, "RERUNS", tmp_path / "none")
    assert reproductions.render_reruns([]) == []


def test_a_comparisons_target_adds_the_rounds_to_reach_it_and_decides_nothing():
    from fedsim.experiments.runs import load_runs

    runs = load_runs([str(COMMITTED / "repro_scool_scarce")])
    claim = {"metrics": ["test_accuracy"], "compare": "last", "last": 10}
    plain = {"baseline": ["strategy=local"], "better": ["strategy=scool"], "metric": "test_accuracy"}
    with_target = {**plain, "target": 0.5}
    untimed, timed = claims.compare(runs, claim, plain), claims.compare(runs, claim, with_target)
    assert "rounds_to_target" not in untimed.report.table
    assert (timed.report.table["rounds_to_target"] >= 1).all()  # every group reaches 50% within its 50 rounds
    assert (timed.decision, timed.figure) == (untimed.decision, untimed.figure)


def as_sweeps(kept: Path, parts: list[set[int]], root: Path) -> list[Path]:
    """The sweeps a kept rerun came from, split by seed into ``parts`` (a rerun run in parts, e.g. more seeds)."""
    (manifest_file,) = (kept / "manifests").glob("*.json")
    manifest = json.loads(manifest_file.read_text())
    sweeps = []
    for k, seeds in enumerate(parts):
        jobs = [j for j in manifest["jobs"] if any(f"seed={seed}" in j["overrides"] for seed in seeds)]
        sweep = root / f"{k}-{manifest['name']}"
        for job in jobs:
            shutil.copytree(kept / job["run_dir"], sweep / job["run_dir"])
        (sweep / "manifest.json").write_text(json.dumps({**manifest, "jobs": jobs}))
        sweeps.append(sweep)
    return sweeps


def test_a_rerun_in_parts_is_collected_apart_from_the_claims_runs_and_decided_on_all_its_seeds(tmp_path, monkeypatch):
    kept = COMMITTED / "reruns" / "repro_scool_scarce"
    first, second = as_sweeps(kept, [{5, 6}, {7}], tmp_path / "sweeps")  # seeds 5, 6; then seed 7 added
    monkeypatch.setattr(reproductions, "DOCS", tmp_path / "docs")
    monkeypatch.setattr(reproductions, "RERUNS", tmp_path / "docs" / "reruns")
    assert reproductions.main(["collect", "--rerun", str(first)]) == 0
    assert reproductions.main(["collect", "--rerun", str(second)]) == 0
    target = tmp_path / "docs" / "reruns" / "repro_scool_scarce"
    assert sorted(p.name for p in target.iterdir() if p.name != "manifests") == sorted(
        p.name for p in kept.iterdir() if p.name != "manifests"
    )
    assert sorted(p.name for p in (target / "manifests").iterdir()) == [f"{first.name}.json", f"{second.name}.json"]
    assert not (tmp_path / "docs" / "repro_scool_scarce").exists()  # the claim's own runs are left as they are
    claims = yaml.safe_load((COMMITTED / "claims.yaml").read_text())
    monkeypatch.setattr(reproductions, "DOCS", COMMITTED)  # the committed runs a rerun is decided against
    in_parts = reproductions.render_reruns(claims)
    heading = "### Claim e: `repro_scool_scarce` with seeds 5, 6, 7"
    section = in_parts[in_parts.index(heading) :]
    monkeypatch.setattr(reproductions, "RERUNS", COMMITTED / "reruns")
    whole = reproductions.render_reruns(claims)  # the rerun kept whole: the same tables
    assert section == whole[whole.index(heading) :][: len(section)]
    assert "2 comparisons decided on both, 0 with another verdict." in section


def test_render_removes_the_reports_of_comparisons_that_are_gone(tmp_path, monkeypatch):
    docs = tmp_path / "docs" / "reproductions"
    shutil.copytree(COMMITTED / "repro_scool_scarce", docs / "repro_scool_scarce")
    claim = {
        "id": "e",
        "title": "t",
        "paper": "p",
        "experiments": ["repro_scool_scarce"],
        "metrics": ["test_accuracy"],
        "compare": "last",
        "last": 10,
        "comparisons": [{"baseline": ["strategy=local"], "better": ["strategy=scool"], "metric": "test_accuracy"}],
    }
    (docs / "claims.yaml").write_text(yaml.safe_dump([claim]))
    renamed = docs / "claim_e" / "1-test_accuracy-vs-strategy-dpsgd"  # the comparison's report under an old name
    renamed.mkdir(parents=True)
    (renamed / "report.md").write_text("old")
    (tmp_path / "README.md").write_text("no reproduction markers\n")
    monkeypatch.setattr(reproductions, "ROOT", tmp_path)
    monkeypatch.setattr(reproductions, "DOCS", docs)
    monkeypatch.setattr(reproductions, "RERUNS", docs / "reruns")
    reproductions.render()
    assert not renamed.exists()
    assert (docs / "claim_e" / "1-test_accuracy-vs-strategy-local" / "report.png").is_file()
    assert (
        "reproductions/claim_e/1-test_accuracy-vs-strategy-local/report.png"
        in (tmp_path / "docs" / "REPRODUCTIONS.md").read_text()
    )
