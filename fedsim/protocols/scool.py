"""SCooL's shared record: what a client's peers receive (``strategies/scool.py``, ``clients/scool.py``).

Variant ``fedsim`` (model mixing) shares the trained model's state dict as it is. Variant
``official`` (update mixing, as github.com/ShuangtongLi/SCooL) shares the trained model under
``model.`` (peers score it on their data) and its last update, trained minus start, under
``update.`` (peers mix it into their own start).
"""

from __future__ import annotations

from flwr.app import ArrayRecord

MODEL, UPDATE = "model.", "update."
GRAPH = "graph"  # ConfigRecord: the server's IDS and PRIOR to a client; a client's row IDS, WEIGHTS, LOSSES back
IDS, PRIOR, USE_LIKELIHOOD = "ids", "prior", "use-likelihood"  # in GRAPH from the server
WEIGHTS, LOSSES = "weights", "losses"  # in GRAPH from a client: its mixing weights and its losses on peers' models


def pack(model: dict, update: dict) -> ArrayRecord:
    """One ArrayRecord holding a model and its update (torch tensors or Flower arrays)."""
    return ArrayRecord({**{MODEL + k: v for k, v in model.items()}, **{UPDATE + k: v for k, v in update.items()}})


def unpack(record: ArrayRecord, prefix: str) -> ArrayRecord:
    """The part of a packed record stored under ``prefix`` (MODEL or UPDATE), without it."""
    return ArrayRecord({k[len(prefix) :]: v for k, v in record.items() if k.startswith(prefix)})
