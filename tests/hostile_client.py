"""A client module for hostile-reply tests: wraps the real client of a strategy (``REAL``) and lets
chosen clients (``MODES``: client id -> mode) tamper with every reply they send, after doing the
honest work, so that their local state is the same in every mode.

Modes: ``inflate`` claims 10^9 examples; ``nan`` writes NaN into an extra payload (the last
ArrayRecord other than the model, or the model when there is none); ``shape`` drops the last
element of the first array of a record; ``dtype`` sends the first array as float64; ``crash``
raises instead of sending a reply that carries arrays (the reference: the replies the other modes
tamper with never reach the server).
"""

from __future__ import annotations

from functools import cache

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from clients import load_client_class

REAL = "fedavg"
MODES: dict[int, str] = {}


def tampered(record: ArrayRecord, mode: str) -> ArrayRecord:
    arrays = {k: record[k].numpy().copy() for k in record.keys()}
    floats = [k for k, v in arrays.items() if v.dtype.kind == "f" and v.size]
    key = floats[0] if floats else next(iter(arrays))
    if mode == "nan":
        arrays[key].reshape(-1)[0] = np.nan
    elif mode == "shape":
        arrays[key] = arrays[key].reshape(-1)[:-1]
    elif mode == "dtype":
        arrays[key] = arrays[key].astype(np.float64)
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


@cache
def hostile_class(base: type) -> type:
    class Hostile(base):  # type: ignore[misc, valid-type]
        def train(self, content: RecordDict, server_round: int) -> RecordDict:
            reply = super().train(content, server_round)
            mode = MODES.get(self.env.client_id)
            if mode is None:
                return reply
            if mode == "crash":  # withhold exactly the replies the other modes tamper with (those with arrays)
                if reply.array_records:
                    raise RuntimeError("hostile client withholds its reply")
                return reply
            if mode == "inflate":
                if "metrics" in reply.metric_records:
                    reply["metrics"]["num-examples"] = 10**9
                return reply
            names = list(reply.array_records.keys())
            if not names:
                return reply
            extras = [n for n in names if n != "arrays"]
            target = extras[-1] if mode == "nan" and extras else ("arrays" if "arrays" in names else names[0])
            reply[target] = tampered(reply[target], mode)
            return reply

    return Hostile


def client_class(cfg):
    return hostile_class(load_client_class(REAL, cfg))


def CLIENT(env):
    return client_class(env.cfg)(env)
