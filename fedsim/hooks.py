"""The client update path: where defences and attack observers plug in.

A client's local update runs inside two kinds of hooks, chosen by ``defence=...`` and
``attack=...`` in any strategy's run:

- in training (:func:`local_training`): a defence may take over the optimizer step (DP-SGD's
  per-example clipping and noise);
- on the reply: Flower ClientApp mods (:data:`Mod`), built by :mod:`fedsim.privacy.mods` and passed
  into the ClientApp from above (:mod:`fedsim.plugins`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from fedsim.protocols.messages import CONFIG, SERVER_ROUND
from fedsim.records import config_of, has_record, integer

Mod = Callable[[Message, Context, ClientAppCallable], Message]


def local_training(
    defence: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch_size: int
) -> AbstractContextManager[torch.optim.Optimizer]:
    """The optimizer local steps use: ``optimizer`` itself unless the defence replaces it."""
    if hasattr(defence, "training"):
        return defence.training(model, optimizer, batch_size)
    return nullcontext(optimizer)


def server_round_of(msg: Message) -> int:
    """The round a message belongs to (0 where its config names none)."""
    return integer(config_of(msg.content), SERVER_ROUND, 0) if has_record(msg.content, CONFIG, ConfigRecord) else 0
