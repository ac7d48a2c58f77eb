"""The Flower apps of a deployment.

The ServerApp runs fedsim's round loop, the ClientApp the strategy's client code, as in simulation.

Both read the run's resolved config from the app's run config (``fedsim-config``, a JSON string
that ``fedsim server`` writes into the app it submits). A SuperNode's own settings come from its
node config: ``partition-id`` (the client id, and which partition of the configured dataset it
holds), ``data-root`` (where that dataset lives on the device), ``data-dir`` (a folder of the
device's own images instead of a partition) and ``state-dir`` (where the client keeps its
persistent state).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from omegaconf import OmegaConf

from fedsim import plugins
from fedsim.progress import show
from fedsim.protocols.messages import CONFIG, METRICS
from fedsim.records import config_of, has_record

server_app = ServerApp()


@server_app.main()
def serve(grid: Grid, context: Context) -> None:
    """The deployment's ServerApp: the run's server job, its config from the run config."""
    from fedsim.engine import server_job

    job = server_job(OmegaConf.create(json.loads(str(context.run_config["fedsim-config"]))))
    show(job.banner(backend="deployment"))
    t0 = time.time()
    job.serve(grid)
    job.finish(time.time() - t0)
    announce_run_end(grid)


RUN_ENDED = "fedsim-run-ended"  # the config flag of the last message, and the marker file a node writes


def announce_run_end(grid: Grid, timeout: float = 30.0) -> None:
    """Tell every connected node that the run is over (``fedsim client`` then exits 0)."""
    content = RecordDict({CONFIG: ConfigRecord({RUN_ENDED: 1})})
    messages = [Message(content, dst_node_id=node, message_type=MessageType.QUERY) for node in grid.get_node_ids()]
    list(grid.send_and_receive(messages, timeout=timeout))


def state_dir(node_config: dict) -> Path:
    """A node's state folder (``state-dir`` of its node config; ``~/.fedsim/client`` by default)."""
    return Path(str(node_config.get("state-dir", Path.home() / ".fedsim" / "client"))).expanduser().resolve()


def node_run_config(run_config: str, node_config: dict) -> dict:
    """The run config as this device runs it: its own data and state locations."""
    cfg = json.loads(run_config)
    if "data-root" in node_config:
        cfg["data_root"] = str(node_config["data-root"])
    if "data-dir" in node_config:
        cfg["data_dir"] = str(node_config["data-dir"])
    cfg["run_dir"] = str(state_dir(node_config))
    return cfg


_apps: dict[str, ClientApp] = {}


def _app_for(context: Context) -> ClientApp:
    """The fedsim ClientApp for this run and node (built once per process)."""
    key = json.dumps([str(context.run_config["fedsim-config"]), dict(context.node_config)], sort_keys=True, default=str)
    if key not in _apps:
        _apps[key] = plugins.client_app(
            node_run_config(str(context.run_config["fedsim-config"]), dict(context.node_config))
        )
    return _apps[key]


client_app = ClientApp()


@client_app.query()
def query(msg: Message, context: Context) -> Message:
    """Handshake and end-of-run messages: the client's facts, or the marker that the run has ended."""
    if has_record(msg.content, CONFIG, ConfigRecord) and config_of(msg.content).get(RUN_ENDED):
        (state_dir(dict(context.node_config)) / RUN_ENDED).write_text(str(context.run_id))  # `fedsim client` watches it
        return Message(RecordDict({METRICS: MetricRecord({RUN_ENDED: 1})}), reply_to=msg)
    return _app_for(context)(msg, context)


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Train messages, handled by the run's ClientApp (built once per run on this node)."""
    return _app_for(context)(msg, context)


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate messages, handled by the run's ClientApp (built once per run on this node)."""
    return _app_for(context)(msg, context)
