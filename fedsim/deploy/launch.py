"""``python -m fedsim server`` and ``python -m fedsim client``.

A real federation on Flower's SuperLink and SuperNodes.

``server`` starts a SuperLink (TLS and node authentication by default), registers the SuperNode
public keys it is given, submits the run as a Flower app whose ServerApp is fedsim's round loop,
streams its progress and stops the SuperLink when the run ends. ``client`` starts a SuperNode that
trains with the strategy's client code on the device's data.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from fedsim.errors import ConfigError, FedsimError
from fedsim.processes import descendants, running

log = logging.getLogger("fedsim")
CONNECTION = "fedsim"  # the SuperLink connection name in the run's Flower config
INSECURE_WARNING = (
    "WARNING: insecure deployment: no TLS, no node authentication; anyone who reaches {} can join and read updates. "
    "Local trials only."
)


def flower_tool(name: str) -> str:
    """Path of a Flower executable installed next to this Python."""
    path = Path(sys.executable).with_name(name)
    return str(path) if path.exists() else (shutil.which(name) or name)


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment of Flower's processes.

    Environment of Flower's processes: their own FLWR_HOME, and this Python's scripts first on PATH (the
    SuperLink and SuperNode start further Flower executables by name).
    """
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "FLWR_HOME": str(flwr_home), "PATH": path}


def wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Wait until ``host:port`` accepts connections (FedsimError if ``process`` exits or time runs out)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise FedsimError(f"the SuperLink exited with code {process.returncode} before listening on {host}:{port}")
        with socket.socket() as sock:
            sock.settimeout(1.0)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.3)
    raise FedsimError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


def free_port() -> int:
    """A TCP port free on this machine now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- server --------------------------------------------------------------------------------------
def tls_files(credentials: Path) -> dict[str, Path]:
    """The SuperLink's TLS files under ``credentials/tls`` (ConfigError naming any that is missing)."""
    files = {name: credentials / "tls" / name for name in ("ca.crt", "server.pem", "server.key")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise ConfigError(
            f"deploy.credentials={credentials}: missing {', '.join(missing)}; create test credentials with "
            f"`python scripts/make_credentials.py --out {credentials}` or pass deploy.insecure=true for a local trial"
        )
    return files


def node_keys(credentials: Path) -> list[Path]:
    """The public keys of the nodes allowed to join (``credentials/nodes/*.pub``; ConfigError if none)."""
    keys = sorted((credentials / "nodes").glob("*.pub"))
    if not keys:
        raise ConfigError(
            f"deploy.credentials={credentials}: no SuperNode public keys under {credentials / 'nodes'} (only known "
            "keys may join); "
            f"create them with `python scripts/make_credentials.py --out {credentials} --nodes N`"
        )
    return keys


def write_app(folder: Path, cfg: DictConfig) -> Path:
    """A Flower app whose components are fedsim's apps and whose run config is this run's config."""
    folder.mkdir(parents=True, exist_ok=True)
    config = json.dumps(OmegaConf.to_container(cfg, resolve=True))
    (folder / "pyproject.toml").write_text(
        f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedsimrun"
version = "1.0.0"
description = "a fedsim run: {cfg.strategy.name} on {cfg.dataset.name}"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "fedsim"

[tool.flwr.app.components]
serverapp = "fedsim.deploy.apps:server_app"
clientapp = "fedsim.deploy.apps:client_app"

[tool.flwr.app.config]
fedsim-config = '''{config}'''
"""
    )
    return folder


def write_connection(flwr_home: Path, address: str, ca: Path | None) -> None:
    """The Flower CLI's SuperLink connection for this run (its own FLWR_HOME)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    security = f'root-certificates = "{ca}"' if ca is not None else "insecure = true"
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{address}"\n{security}\n'
    )


def connect_host(host: str) -> str:
    """The address a local process connects to for a server listening on ``host``."""
    return "127.0.0.1" if host in ("0.0.0.0", "::") else host


def security_options(cfg: DictConfig) -> tuple[list[str], dict[str, Path] | None, list[Path]]:
    """(SuperLink flags, TLS files, SuperNode keys to register); checked before anything starts."""
    d = cfg.deploy
    if d.insecure:
        print(INSECURE_WARNING.format(f"{d.host}:{d.port}"), file=sys.stderr, flush=True)
        return ["--insecure"], None, []
    credentials = Path(str(d.credentials)).resolve()
    tls, keys = tls_files(credentials), node_keys(credentials)
    flags = [
        "--ssl-ca-certfile",
        str(tls["ca.crt"]),
        "--ssl-certfile",
        str(tls["server.pem"]),
        "--ssl-keyfile",
        str(tls["server.key"]),
        "--enable-supernode-auth",
    ]
    return flags, tls, keys


def register_keys(keys: list[Path], env: dict[str, str]) -> None:
    """Let these SuperNodes join (keys already known from a previous start are fine)."""
    for key in keys:
        register = subprocess.run(
            [flower_tool("flwr"), "supernode", "register", str(key), CONNECTION],
            env=env,
            capture_output=True,
            text=True,
        )
        output = register.stdout + register.stderr
        if register.returncode != 0 and "already" not in output:
            raise FedsimError(f"could not register {key}: {output.strip().splitlines()[-1:]}")


def serve(cfg: DictConfig) -> int:
    """Run ``cfg`` as a real federation: SuperLink up, keys registered, run submitted and streamed."""
    from fedsim.data import dataset_from_config
    from fedsim.data.local_folder import dataset_info
    from fedsim.engine import prepare_run_dir

    d = cfg.deploy
    flags, tls, keys = security_options(cfg)
    run_dir = prepare_run_dir(cfg)
    run_dir.write_config(cfg)
    with open_dict(cfg):  # devices with their own images learn the dataset's format from the run config
        cfg.dataset_info = dataset_info(dataset_from_config(cfg))
    flower = run_dir.path / "flower"
    flower.mkdir(parents=True, exist_ok=True)
    # The SuperLink keeps its state (registered keys, node ids) in the run directory, so a restarted
    # server (resume=...) takes its connected SuperNodes back.
    superlink = [
        flower_tool("flower-superlink"),
        "--host",
        str(d.host),
        "--port",
        str(d.port),
        "--database",
        str(flower / "superlink.db"),
        "--disable-runtime-dependency-installation",
        *flags,
    ]
    address = f"{connect_host(str(d.host))}:{d.port}"
    write_connection(flower, address, tls["ca.crt"] if tls else None)
    app = write_app(flower / "app", cfg)
    env = flower_env(flower)
    with (flower / "superlink.log").open("w") as superlink_log:
        # Same process group as this command: killing the group also stops the SuperLink.
        link = subprocess.Popen(superlink, stdout=superlink_log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_for_port(connect_host(str(d.host)), int(d.port), 60, link)
            register_keys(keys, env)
            join = "--insecure" if tls is None else f"--root-certificates {tls['ca.crt']} --auth-key <its private key>"
            print(
                f"SuperLink on {d.host}:{d.port} "
                f"({'TLS, ' + str(len(keys)) + ' authorized SuperNode keys' if tls else 'INSECURE'}); "
                f"logs in {flower}\nwaiting for {cfg.num_clients} clients: python -m fedsim client --server "
                f"{address} --partition-id K {join}",
                flush=True,
            )
            started = time.time()
            submitted = subprocess.run([flower_tool("flwr"), "run", str(app), CONNECTION, "--stream"], env=env)
            summary = run_dir.path / "summary.json"
            if submitted.returncode == 0 and not (summary.exists() and summary.stat().st_mtime >= started):
                raise FedsimError(
                    f"the run did not finish (see the error above and {flower}); continue it with resume={run_dir.path}"
                )
            return submitted.returncode
        finally:
            if link.poll() is None:
                link.terminate()
                link.wait(timeout=30)


def cmd_server(args: list[str]) -> int:
    """``python -m fedsim server``: start the SuperLink, run the ServerApp, stop the SuperLink."""
    from fedsim.engine import resume_from_command_line
    from fedsim.validation import compose_run

    if "--help" in args or "-h" in args:
        print("usage: python -m fedsim server [key=value ...]   (the run config, plus deploy.* below)\n")
        print(OmegaConf.to_yaml(compose_run([]).deploy))
        return 0
    cfg = compose_run(args)
    if cfg.resume:
        cfg = resume_from_command_line(cfg, args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the SuperLink on `kill` too
    return serve(cfg)


# -- client --------------------------------------------------------------------------------------
RETRY_FIRST_WAIT = 3.0  # seconds before the second attempt; doubles per attempt up to RETRY_MAX_WAIT
RETRY_MAX_WAIT = 60.0


def retry_wait(attempt: int) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based).

    Flower keeps a device's key taken until its old session misses two 30 s heartbeats, so a restarted device
    is refused for up to a minute; the doubling waits of the default ``--max-retries`` span that.
    """
    return min(RETRY_FIRST_WAIT * 2 ** (attempt - 1), RETRY_MAX_WAIT)


def client_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m fedsim client``."""
    parser = argparse.ArgumentParser(
        prog="python -m fedsim client", description="Start a fedsim edge client (a Flower SuperNode)."
    )
    parser.add_argument("--server", required=True, help="HOST:PORT of the fedsim server (its SuperLink)")
    parser.add_argument(
        "--partition-id", type=int, required=True, help="this client's id: the partition of the run's dataset it holds"
    )
    parser.add_argument(
        "--data-root", help="where the run's dataset lives on this device (default: the run's data_root)"
    )
    parser.add_argument(
        "--data-dir", help="a folder of this device's own images (train/<class>/*.png) instead of a partition"
    )
    parser.add_argument("--state-dir", default="~/.fedsim/client", help="where this client keeps its persistent state")
    parser.add_argument("--root-certificates", help="the CA certificate of the server's TLS (ca.crt)")
    parser.add_argument("--auth-key", help="this device's private key (its .pub must be registered with the server)")
    parser.add_argument("--insecure", action="store_true", help="plain HTTP, no authentication (local trials only)")
    parser.add_argument(
        "--connect-timeout", type=float, default=120.0, help="seconds each attempt waits for an unreachable server"
    )
    parser.add_argument(
        "--max-retries",
        type=int,
        default=5,
        help="attempts after the first when the server is unreachable or refuses this device, "
        f"{RETRY_FIRST_WAIT:g} s apart and doubling (the defaults span the minute a restarted device's old session "
        "holds its key)",
    )
    parser.add_argument(
        "--keep-waiting",
        action="store_true",
        help="stay connected for the next run when a run ends (as a SuperNode does)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show Flower's and gRPC's logs (otherwise in <state-dir>/client-K/supernode.log)",
    )
    return parser


def supernode_command(opts: argparse.Namespace) -> list[str]:
    """The ``flower-supernode`` command line for the client ``opts`` describes."""
    state = Path(opts.state_dir).expanduser().resolve() / f"client-{opts.partition_id}"
    node_config = [f"partition-id={opts.partition_id}", f"state-dir='{state}'"]
    for key, value in (("data-root", opts.data_root), ("data-dir", opts.data_dir)):
        if value:
            node_config.append(f"{key}='{Path(value).expanduser().resolve()}'")
    command = [
        flower_tool("flower-supernode"),
        "--superlink",
        opts.server,
        "--node-config",
        " ".join(node_config),
        "--port",
        str(free_port()),
        "--max-wait-time",
        str(opts.connect_timeout),
    ]
    if opts.insecure:
        command.append("--insecure")
    else:
        if not opts.root_certificates or not opts.auth_key:
            raise ConfigError(
                "a secure client needs --root-certificates (the server's ca.crt) and --auth-key (its private key); "
                "--insecure only for local trials"
            )
        for path in (opts.root_certificates, opts.auth_key):
            if not Path(path).is_file():
                raise ConfigError(f"{path}: no such file")
        command += [
            "--root-certificates",
            str(Path(opts.root_certificates).resolve()),
            "--auth-supernode-private-key",
            str(Path(opts.auth_key).resolve()),
        ]
    return command


TLS_FAILURES = (
    "CERTIFICATE_VERIFY_FAILED",
    "certificate verify failed",
    "ssl_transport",
    "SSL_ERROR",
    "Handshake failed",
)


def reachable(server: str, timeout: float = 3.0) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    host, _, port = server.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def refusal_cause(log_text: str, server: str) -> str:
    """One line for why a SuperNode gave up.

    From its log where Flower names the TLS failure, else from whether the server's port answers (it does: the
    server refused this device).
    """
    if any(n in log_text for n in TLS_FAILURES):
        return "the TLS handshake failed: --root-certificates must be the CA (ca.crt) of the server's certificate"
    if not reachable(server):
        return f"nothing answers at --server {server}: check the address and that the server runs"
    return (
        f"the server at --server {server} refused this device: register the public key of --auth-key with the server "
        "(deploy.credentials/nodes/), and check that --root-certificates is the server's CA"
    )


def stop_process_tree(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop ``proc`` and every process it started.

    Stop ``proc`` and every process it started (a SuperNode's ClientApp processes outlive it otherwise):
    SIGTERM to all, SIGKILL to what is left after ``timeout`` seconds.
    """
    tree = descendants(proc.pid)
    for pid in [proc.pid, *tree]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.time() + timeout
    while time.time() < deadline and (proc.poll() is None or any(map(running, tree))):
        time.sleep(0.2)
    for pid in [proc.pid, *tree]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def run_supernode(
    command: list[str], env: dict[str, str], log_path: Path, verbose: bool, ended: Path | None
) -> int | None:
    """Run one SuperNode until it exits or its run ends.

    Run one SuperNode until it exits (its exit code) or, with ``ended`` given, until the run it serves
    announces its end (None: it was stopped).
    """
    with log_path.open("a") as log_file:
        out = None if verbose else log_file
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT if out else None)
        try:
            while proc.poll() is None:
                if ended is not None and ended.exists():
                    return None
                time.sleep(0.5)
            return proc.returncode
        finally:
            stop_process_tree(proc)


def cmd_client(args: list[str]) -> int:
    """``python -m fedsim client``: a SuperNode for the run at ``--server``.

    A SuperNode for the run at ``--server``: exits 0 when the run ends (``--keep-waiting``: stays for the
    next), and after ``--max-retries`` failed attempts exits 2 with one line naming the cause.
    """
    from fedsim.deploy.apps import RUN_ENDED

    opts = client_parser().parse_args(args)
    if opts.max_retries < 0:
        raise ConfigError(f"--max-retries {opts.max_retries} is invalid: expected an integer >= 0")
    command = supernode_command(opts)
    if opts.insecure:
        print(INSECURE_WARNING.format(opts.server), file=sys.stderr, flush=True)
    state = Path(opts.state_dir).expanduser().resolve() / f"client-{opts.partition_id}"
    state.mkdir(parents=True, exist_ok=True)
    env = flower_env(state / "flower")
    log_path, ended = state / "supernode.log", state / RUN_ENDED
    ended.unlink(missing_ok=True)
    attempt = 0
    while True:
        attempt += 1
        print(f"client {opts.partition_id}: connecting to {opts.server}", flush=True)
        start = log_path.stat().st_size if log_path.exists() else 0
        code = run_supernode(command, env, log_path, opts.verbose, None if opts.keep_waiting else ended)
        if code is None:
            print(f"client {opts.partition_id}: the server's run ended", flush=True)
            return 0
        if code <= 0:
            return code
        with log_path.open() as f:
            f.seek(start)
            cause = refusal_cause(f.read(), opts.server)
        if attempt > opts.max_retries:
            where = "" if opts.verbose else f"; Flower's log: {log_path}"
            raise FedsimError(f"client {opts.partition_id}: {cause} (gave up after {attempt} attempts{where})")
        wait = retry_wait(attempt)
        print(
            f"client {opts.partition_id}: attempt {attempt} of {opts.max_retries + 1}: {cause}; retrying in {wait:g} s",
            flush=True,
        )
        time.sleep(wait)
