"""The ClientApp mods of a run's privacy plug-ins.

An attack observer (outermost) sees exactly what the server receives and records the leakage (metrics under
``<run>/attacks/round_XXXX/``, which :class:`AttackRoundMeans` adds to the round's metrics, and a grid image);
an update defence (local DP, pruning) transforms the model update before it leaves the client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flwr.app import Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable
from typing_extensions import override

from fedsim.errors import FedsimError
from fedsim.hooks import Mod, server_round_of
from fedsim.privacy.attacks import attack_from_config
from fedsim.privacy.attacks.base import ClientView
from fedsim.privacy.report import round_folder, round_means, save_result
from fedsim.protocols.messages import ARRAYS
from fedsim.records import arrays_of, has_record
from fedsim.seeding import torch_generator
from fedsim.server_loop import RoundObserver

log = logging.getLogger("fedsim")


def defence_mod(defence: Any, seed: int, client_id: Callable[[Context], int]) -> Mod:
    """Transform the model update of every training reply (seeded by run, round and client)."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        if msg.metadata.message_type != MessageType.TRAIN or reply.has_error():
            return reply
        if has_record(msg.content) and has_record(reply.content):
            generator = torch_generator(seed, "defence", server_round_of(msg), client_id(context))
            reply.content[ARRAYS] = defence.transform(arrays_of(msg.content), arrays_of(reply.content), generator)
        return reply

    return mod


def attack_mod(
    attack_cfg: Any, run_cfg: Any, client_env: Callable[[int], Any], client_id: Callable[[Context], int]
) -> Mod:
    """Observe the replies of the configured clients and rounds with the configured attack."""
    attack = attack_from_config(attack_cfg, int(run_cfg.seed))
    every = int(attack_cfg.every)
    targets = None if attack_cfg.clients is None else {int(c) for c in attack_cfg.clients}
    warned: list[bool] = []

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        cid, server_round = client_id(context), server_round_of(msg)
        if msg.metadata.message_type != MessageType.TRAIN or reply.has_error() or server_round % every:
            return reply
        if targets is not None and cid not in targets:
            return reply
        view = ClientView(cid, server_round, msg.content, reply.content, client_env(cid))
        try:
            result = attack.observe(view)
        except FedsimError as err:  # a misconfigured attack must not cost the client its round
            if not warned:
                warned.append(True)
                log.warning("attack=%s on client %d, round %d: %s", attack_cfg.name, cid, server_round, err)
            return reply
        if result is None and not warned:
            warned.append(True)
            log.warning(
                "attack=%s: the reply of client %d in round %d carries nothing this attack targets "
                "(it needs a model update, FedFed's shared features or FedImpro's statistics)",
                attack_cfg.name,
                cid,
                server_round,
            )
        if result is not None:
            info = {
                "attack": str(attack_cfg.name),
                "round": server_round,
                "client": cid,
                "title": f"{attack_cfg.name}, round {server_round}, client {cid}",
            }
            save_result(round_folder(run_cfg.run_dir, server_round), f"client_{cid:05d}", result, info)
        return reply

    return mod


def client_mods(
    cfg: Any, defence: Any, client_env: Callable[[int], Any], client_id: Callable[[Context], int]
) -> list[Mod]:
    """The ClientApp mods of a run: the attack observer outermost, then the update defence."""
    mods: list[Mod] = []
    if str(cfg.attack.name) != "none" and not cfg.attack.get("final_model"):  # the final-model audit runs on the server
        mods.append(attack_mod(cfg.attack, cfg, client_env, client_id))
    if hasattr(defence, "transform"):
        mods.append(defence_mod(defence, int(cfg.seed), client_id))
    return mods


class AttackRoundMeans(RoundObserver):
    """The round's mean leakage over the clients the attack observed.

    A :class:`~fedsim.server_loop.RoundObserver`: the round's mean leakage over the clients its attack
    observed (``attack_<metric>``), and in round 1 that of what clients shared before the first round
    (``attack_setup_<metric>``, FedFed's shared features).
    """

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir

    @override
    def observe_round(self, server_round: int, arrays: Any, record: dict[str, Any]) -> None:
        if server_round == 1:
            record.update(round_means(self.run_dir, 0, prefix="attack_setup_"))
        record.update(round_means(self.run_dir, server_round))
