"""``python -m fedsim <command> [hydra overrides]``.

User errors (bad override, unknown strategy, missing data) print one line and exit with code 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from omegaconf import OmegaConf

from fedsim.errors import FedsimError

USAGE = """usage: python -m fedsim <command> [key=value ...]

commands:
  run     run a federated training job (simulation by default); -m runs a sweep (one job per combination)
  report  statistics over seeds for run/sweep directories: tables with confidence intervals, curves
  attack  evaluate a privacy attack against a model/dataset/defence setting, without an FL run
  server  serve a run to real clients (Flower SuperLink; TLS and node authentication by default)
  client  start an edge client that joins a server (Flower SuperNode)

`python -m fedsim run --help` lists the config groups, their options and the composed config.
Examples:
  python -m fedsim run strategy=fedprox num_rounds=10 partition.alpha=0.1
  python -m fedsim run backend=inprocess num_clients=20 clients_per_round=5
  python -m fedsim run resume=runs/20261122-180000-fedavg
  python -m fedsim run -m seed=0,1,2 strategy=fedavg,fedprox --jobs 2
  python -m fedsim report runs/sweeps/20261203-120000-seed-strategy --baseline strategy=fedavg
  python -m fedsim run strategy=fedavg attack=inverting_gradients defence=local_dp
  python -m fedsim attack attack=inverting_gradients model=cnn defence=none batch_size=1 num_images=8
  python -m fedsim server strategy=fedavg num_clients=2 deploy.credentials=credentials
  python -m fedsim client --server 127.0.0.1:8000 --partition-id 0 --root-certificates credentials/tls/ca.crt
  --auth-key credentials/nodes/node-0
"""


def _run_help() -> str:
    from fedsim.config import GROUPS, group_options
    from fedsim.validation import compose_run

    lines = [
        "usage: python -m fedsim run [key=value ...] [--cfg job]",
        "       python -m fedsim run -m [key=a,b ...] [--jobs N]   sweep: one run per combination (Hydra syntax:",
        "           a,b,c  range(0,5)  choice(a,b)  glob(*)), +experiment=NAME for configs/experiment/NAME.yaml",
        "",
        "config groups (pick with group=option):",
    ]
    lines += [f"  {g:<10} {', '.join(group_options(g))}" for g in (*GROUPS, "logger", "experiment")]
    lines += ["", "composed default config:", OmegaConf.to_yaml(compose_run([]))]
    return "\n".join(lines)


def _take_option(args: list[str], names: tuple[str, ...]) -> tuple[list[str], str | None]:
    """(``args`` without ``NAME VALUE`` / ``NAME=VALUE``, the value; None when absent)."""
    for i, arg in enumerate(args):
        name, _, value = arg.partition("=")
        if name in names:
            if value:
                return args[:i] + args[i + 1 :], value
            if i + 1 == len(args):
                raise FedsimError(f"option '{arg}' needs a value, e.g. {arg} 2")
            return args[:i] + args[i + 2 :], args[i + 1]
    return args, None


def cmd_run(args: list[str]) -> int:
    """``python -m fedsim run``: one run, or a sweep with ``-m``; returns the exit code."""
    from fedsim.validation import compose_run

    if "--help" in args or "-h" in args:
        print(_run_help())
        return 0
    multirun = "-m" in args or "--multirun" in args
    args = [a for a in args if a not in ("-m", "--multirun")]
    args, jobs = _take_option(args, ("--jobs", "-j"))
    if jobs is not None and not multirun:
        raise FedsimError("--jobs runs sweeps: add -m (e.g. python -m fedsim run -m seed=0,1,2 --jobs 2)")
    if multirun:
        for arg in args:
            if arg.startswith("-"):
                raise FedsimError(f"unknown option '{arg}': a sweep takes key=value overrides, --jobs N")
        if jobs is not None and not jobs.isdigit():
            raise FedsimError(f"--jobs {jobs} is invalid: expected an integer >= 1")
        from fedsim.experiments.sweep import run_sweep

        return run_sweep(args, int(jobs or 1))
    show_cfg = "--cfg" in args
    if show_cfg:
        i = args.index("--cfg")
        args = args[:i] + args[i + 2 :]
    for arg in args:
        if arg.startswith("-"):
            raise FedsimError(
                f"unknown option '{arg}': `python -m fedsim run` takes key=value overrides, -m (sweep), --cfg job or "
                "--help"
            )
    cfg = compose_run(args)
    if show_cfg:
        print(OmegaConf.to_yaml(cfg))
        return 0
    from fedsim.engine import resume_from_command_line, run

    if cfg.resume:
        cfg = resume_from_command_line(cfg, args)
    run(cfg)
    return 0


def cmd_attack(args: list[str]) -> int:
    """``python -m fedsim attack``: a stand-alone privacy attack on fresh victims; returns the exit code."""
    from fedsim.validation import compose_attack_run

    if "--help" in args or "-h" in args:
        from fedsim.config import group_options

        print("usage: python -m fedsim attack [key=value ...]\n")
        print("\n".join(f"  {g:<8} {', '.join(group_options(g))}" for g in ("attack", "defence", "model", "dataset")))
        print("\ndefault config:\n" + OmegaConf.to_yaml(compose_attack_run([])))
        return 0
    for arg in args:
        if arg.startswith("-"):
            raise FedsimError(f"unknown option '{arg}': `python -m fedsim attack` takes key=value overrides or --help")
    from fedsim.privacy.evaluate import run_attack

    run_attack(compose_attack_run(args))
    return 0


def cmd_server(args: list[str]) -> int:
    """``python -m fedsim server``: a deployment's SuperLink and ServerApp; returns the exit code."""
    from fedsim.deploy.launch import cmd_server as serve

    return serve(args)


def cmd_report(args: list[str]) -> int:
    """``python -m fedsim report``: statistics over seeds of run and sweep directories."""
    from fedsim.experiments.report_cli import cmd_report as report

    return report(args)


def cmd_client(args: list[str]) -> int:
    """``python -m fedsim client``: an edge client (a Flower SuperNode); returns the exit code."""
    from fedsim.deploy.launch import cmd_client as join

    return join(args)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "run": cmd_run,
    "report": cmd_report,
    "attack": cmd_attack,
    "server": cmd_server,
    "client": cmd_client,
}


def main(argv: list[str] | None = None) -> int:
    """The ``fedsim`` command: dispatch to a subcommand; bad input is one line and exit code 2."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"fedsim: error: unknown command '{command}': choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[command](rest)
    except FedsimError as err:
        print(f"fedsim: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedsim: interrupted; continue with resume=<run dir> (from its last checkpoint)", file=sys.stderr)
        return 130
