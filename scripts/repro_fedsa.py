"""FedSA at our scale: student alone, no-selection amalgamation, FedSA, centralized amalgamation.

Five teacher parties, each with 2 classes of Fashion-MNIST (3,000 images; CIFAR-10 too when its
files are under data_root) and a CNN teacher trained on that task; the student's new task is the
10-class problem, with 5 labeled probe images per class at the server. Same seed, teachers,
probe set and task adaptation for every method:

- student alone: trained on the probe set only (probe epochs + the same task adaptation);
- no selection: every teacher takes part in every round, equal weights (``strategy.selection=all``);
- FedSA: 2 teachers drawn per selection by saliency similarity, re-selected every 5 rounds;
- centralized amalgamation: the upper bar; every teacher and every party's images in one place,
  one student trained on the sum of the teachers' hint losses for as many epochs as FL rounds x
  local epochs, then the same task adaptation.

A second setting makes one teacher useless (random weights), where selection should matter.
Prints student accuracy and the teachers selected per round. The claims to check: FedSA approaches
the centralized baseline and beats the no-selection one.

    python scripts/repro_fedsa.py --rounds 10
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from repro_common import datasets_available, late_mean, repro_parser, run_fedsim

from clients.fedsa import conv_split, hint_loss, translator_for
from fedsim.config import compose
from fedsim.data import dataset_from_config, make_partition
from fedsim.data.local import LocalData
from fedsim.models import model_from_config
from fedsim.records import model_to_record
from fedsim.seeding import seed_torch, torch_generator
from strategies.fedsa import StudentTasks

METHODS = {"no selection": ["strategy.selection=all"], "FedSA": []}


def centralized_amalgamation(overrides: list[str], teacher_dir: Path) -> dict:
    """One student, all teachers and all parties' images in one place (the same teachers as the FL runs)."""
    cfg = compose(["strategy=fedsa", *overrides])
    data = dataset_from_config(cfg)
    tasks = StudentTasks(cfg, data)
    seed_torch(cfg.seed, "init")
    student = model_from_config(cfg, data.input_shape, data.num_classes).to(tasks.device)
    s = cfg.strategy
    init = tasks.train_on_probe(
        model_to_record(student), int(s.probe_epochs), float(s.probe_lr), "fedsa-probe-init", fresh_head=False
    )
    student.load_state_dict(init.to_torch_state_dict())
    splits = make_partition(data.y_train.numpy(), cfg.num_clients, cfg.partition, cfg.seed)
    parties = [
        LocalData(data.x_train[torch.from_numpy(sp.all)], data.y_train[torch.from_numpy(sp.all)], data) for sp in splits
    ]
    teachers, translators = [], []
    seed_torch(cfg.seed, "centralized-translators")
    for k in range(len(parties)):
        teacher = model_from_config(cfg, data.input_shape, data.num_classes).to(tasks.device)
        teacher.load_state_dict(torch.load(teacher_dir / f"party-{k:03d}.pt", weights_only=True))
        teachers.append(conv_split(teacher.eval().requires_grad_(False), data.input_shape)[0])
        translators.append(translator_for(student, teacher, data.input_shape).to(tasks.device))
    student_low, _ = conv_split(student, data.input_shape)
    params = list(student.parameters()) + [p for t in translators for p in t.parameters()]
    optimizer = torch.optim.Adam(params, lr=float(cfg.optimizer.lr), weight_decay=float(cfg.optimizer.weight_decay))
    student.train()
    for epoch in range(int(cfg.num_rounds) * int(cfg.local_epochs)):
        gen = torch_generator(cfg.seed, "centralized", epoch)
        streams = [list(p.batches(int(cfg.batch_size), tasks.device, gen)) for p in parties]
        for step in range(max(len(b) for b in streams)):
            loss = sum(
                hint_loss(student_low, translators[k], teachers[k], streams[k][step % len(streams[k])][0])
                for k in range(len(parties))
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return tasks.adapted_score(model_to_record(student), "fedsa-adapt-centralized")


def main() -> None:
    parser = repro_parser(__doc__)
    parser.add_argument(
        "--useless-teacher", type=int, default=0, help="party whose teacher is random in the second setting"
    )
    args = parser.parse_args()
    runs_root = args.runs_root or tempfile.mkdtemp(prefix="repro_fedsa_")
    common = [
        f"num_rounds={args.rounds}",
        f"seed={args.seed}",
        f"data_root={args.data_root}",
        "strategy=fedsa",
        *args.extra,
    ]
    settings = {
        "all teachers trained": [],
        f"teacher {args.useless_teacher} random": [f"strategy.teachers.random=[{args.useless_teacher}]"],
    }
    rows = []
    for dataset in datasets_available(args.data_root):
        for setting, extra in settings.items():
            tag = f"{dataset}-{'useless' if extra else 'trained'}"
            results = {}
            for method, overrides in METHODS.items():
                results[method] = run_fedsim(
                    common + [f"dataset={dataset}", *extra, *overrides], runs_root, f"{tag}-{method.replace(' ', '-')}"
                )
            fedsa_dir = Path(runs_root) / f"{tag}-FedSA"
            log = map(json.loads, (fedsa_dir / "fedsa.jsonl").read_text().splitlines())
            alone = next(e for e in log if e["event"] == "student_alone")
            print(f"running {tag}-centralized ...", flush=True)
            central = centralized_amalgamation(common + [f"dataset={dataset}", *extra], fedsa_dir / "teachers")
            rows.append((dataset, setting, alone, results, central))

    print(
        f"\n5 teacher parties x 2 classes (3,000 images each), 10-class student, 5 probe images per class, "
        f"{args.rounds} rounds, seed {args.seed}, CNN; runs in {runs_root}"
    )
    print(f"{'dataset':<14} {'setting':<22} {'method':<24} {'final acc':>9} {'late mean':>9}")
    for dataset, setting, alone, results, central in rows:
        print(f"{dataset:<14} {setting:<22} {'student alone':<24} {alone['accuracy']:>9.4f} {'':>9}")
        for method, s in results.items():
            print(f"{dataset:<14} {setting:<22} {method:<24} {s['final_test_accuracy']:>9.4f} {late_mean(s):>9.4f}")
        print(f"{dataset:<14} {setting:<22} {'centralized amalgamation':<24} {central['accuracy']:>9.4f} {'':>9}")
    print("\nteachers selected per round (FedSA):")
    for dataset, setting, _, results, _ in rows:
        picks = " ".join("".join(map(str, r["selected_teachers"])) for r in results["FedSA"]["metrics"])
        print(f"{dataset:<14} {setting:<22} {picks}")


if __name__ == "__main__":
    main()
