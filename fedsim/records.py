"""Helpers around Flower records: model <-> ArrayRecord, payload sizes, validity checks.

A Flower :class:`~flwr.app.Array` holds its values serialized (NumPy's ``.npy`` bytes) and parses
them again on every ``numpy()``. Where sender and receiver share a process (a simulation's client
and its aggregation, a worker's clients and the global model they all load) that round trip is
most of a small client's cost, so fedsim reads arrays through :func:`tensor_of`, which parses an
Array once, and its clients reply with :class:`TensorArray`, which serializes only when its bytes
are needed (a message leaving for another machine).
"""

from __future__ import annotations

import io
import math
import weakref
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from functools import cache, partial
from typing import Any, TypeVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from torch import nn
from typing_extensions import override

from fedsim.protocols.messages import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES

_decoded: dict[int, torch.Tensor] = {}  # id(Array) -> its parsed values, dropped with the Array


class TensorArray(Array):
    """An :class:`~flwr.app.Array` that keeps its tensor and serializes it on first need.

    Equal to the Array Flower would build from the same tensor (same dtype, shape, ``.npy`` bytes);
    it pickles as the tensor alone, and deflates for the wire under Flower's own class name, so
    that a receiver inflates a plain Array.
    """

    __qualname__ = "Array"
    _tensor: torch.Tensor

    def __init__(self, tensor: torch.Tensor) -> None:  # pylint: disable=super-init-not-called
        self.__dict__.update(
            dtype=numpy_dtype(tensor.dtype), shape=tuple(tensor.shape), stype="numpy.ndarray", _tensor=tensor
        )

    @property
    def data(self) -> bytes:
        """The ``.npy`` bytes, serialised on first access."""
        if "_data" not in self.__dict__:
            self.__dict__["_data"] = Array(self._tensor.numpy()).data
        return self.__dict__["_data"]

    @data.setter
    def data(self, value: bytes) -> None:
        self.__dict__["_data"] = value

    @override
    def numpy(self) -> np.ndarray:
        return self._tensor.numpy().copy()

    def num_bytes(self) -> int:
        """Length of ``data`` without serializing."""
        return npy_header_bytes(self.dtype, self.shape) + self._tensor.numel() * self._tensor.element_size()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k in ("dtype", "shape", "stype", "_tensor")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


@cache
def numpy_dtype(dtype: torch.dtype) -> str:
    """NumPy's name of a torch dtype (``float32``, ``int64``, ...)."""
    return str(torch.empty(0, dtype=dtype).numpy().dtype)


@cache
def npy_header_bytes(dtype: str, shape: tuple[int, ...]) -> int:
    """Bytes of the ``.npy`` header NumPy writes before an array of this dtype and shape."""
    buffer = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.tell()


_Record = TypeVar("_Record", ArrayRecord, ConfigRecord, MetricRecord)


def _record(content: RecordDict, key: str, kind: type[_Record]) -> _Record:
    record = content[key]
    if not isinstance(record, kind):
        raise TypeError(f"record '{key}' is a {type(record).__name__}, expected a {kind.__name__}")
    return record


# Read records through get/items, not Flower's array_records/metric_records views: a view holds its RecordDict
# in a reference cycle, which keeps the content (and any model tensors it lends) alive until the next gc.


def has_record(content: RecordDict, key: str = ARRAYS, kind: type = ArrayRecord) -> bool:
    """Whether ``content[key]`` is a record of ``kind`` (an ArrayRecord unless told)."""
    return isinstance(content.get(key), kind)


def array_records_of(content: RecordDict) -> dict[str, ArrayRecord]:
    """The ArrayRecords of ``content`` by name, in order."""
    return {name: record for name, record in content.items() if isinstance(record, ArrayRecord)}


def arrays_of(content: RecordDict, key: str = ARRAYS) -> ArrayRecord:
    """The ArrayRecord ``content[key]`` (KeyError if absent, TypeError if another kind of record)."""
    return _record(content, key, ArrayRecord)


def config_of(content: RecordDict, key: str = CONFIG) -> ConfigRecord:
    """The ConfigRecord ``content[key]`` (KeyError if absent, TypeError if another kind of record)."""
    return _record(content, key, ConfigRecord)


def metrics_of(content: RecordDict, key: str = METRICS) -> MetricRecord:
    """The MetricRecord ``content[key]`` (KeyError if absent, TypeError if another kind of record)."""
    return _record(content, key, MetricRecord)


_MISSING: Any = object()


def _value(record: ConfigRecord | MetricRecord, key: str, default: Any) -> Any:
    return record[key] if default is _MISSING else record.get(key, default)


def _numeric(record: ConfigRecord | MetricRecord, key: str, default: Any) -> int | float:
    value = _value(record, key, default)
    if not isinstance(value, (int, float)):
        raise TypeError(f"record value '{key}' is {type(value).__name__}, expected a number")
    return value


def number(record: ConfigRecord | MetricRecord, key: str, default: float = _MISSING) -> float:
    """``record[key]`` (or ``default`` where absent) as a float; TypeError if it is not a number."""
    return float(_numeric(record, key, default))


def integer(record: ConfigRecord | MetricRecord, key: str, default: int = _MISSING) -> int:
    """``record[key]`` (or ``default`` where absent) as an int; TypeError if it is not a number."""
    return int(_numeric(record, key, default))


def numbers(record: ConfigRecord | MetricRecord, key: str) -> list[float]:
    """``record[key]``, a list of numbers (an empty list where absent); TypeError if it is something else."""
    values = record.get(key, [])
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
        raise TypeError(f"record value '{key}' is not a list of numbers")
    return [float(v) for v in values]


def integers(record: ConfigRecord | MetricRecord, key: str) -> list[int]:
    """``record[key]``, a list of whole numbers (an empty list where absent); TypeError otherwise."""
    return [int(v) for v in numbers(record, key)]


def text(record: ConfigRecord, key: str, default: str = _MISSING) -> str:
    """``record[key]`` (or ``default`` where absent), a string; TypeError if it is something else."""
    value = _value(record, key, default)
    if not isinstance(value, str):
        raise TypeError(f"record value '{key}' is {type(value).__name__}, expected a string")
    return value


def tensor_of(array: Array) -> torch.Tensor:
    """The values of ``array`` as a CPU tensor, parsed once per Array: treat it as read-only."""
    if isinstance(array, TensorArray):
        return array._tensor
    key = id(array)
    found = _decoded.get(key)
    if found is None:
        found = _decoded[key] = torch.from_numpy(array.numpy())
        weakref.finalize(array, _decoded.pop, key, None)
    return found


def tensor_record(
    tensors: dict[str, torch.Tensor], array: Callable[[torch.Tensor], TensorArray] = TensorArray
) -> ArrayRecord:
    """An ArrayRecord of :class:`TensorArray` (or ``array``) holding ``tensors`` (CPU tensors the record now owns)."""
    record = ArrayRecord()  # filled item by item: ArrayRecord({...}) would serialize each Array
    for key, tensor in tensors.items():
        record[key] = array(tensor)
    return record


def model_to_record(model: nn.Module) -> ArrayRecord:
    """The model's full state (parameters and buffers) as an ArrayRecord (of copies)."""
    return tensor_record({k: v.detach().to("cpu", copy=True) for k, v in model_state(model).items()})


def model_reply(model: nn.Module) -> ArrayRecord:
    """The model's full state for a train reply: lent inside :func:`consumed_at_once`, else copied.

    Inside :func:`consumed_at_once` (a host that reads each reply before it runs the next client) the
    record lends the model's own tensors instead of copying them; outside, it is
    :func:`model_to_record`. A lent array read after the model has changed raises instead of giving other
    values.
    """
    if not _lending:
        return model_to_record(model)
    state = model_state(model)
    if any(tensor.device.type != "cpu" for tensor in state.values()):
        return model_to_record(model)
    loan = _Loan()
    _lending[-1].append(loan)
    loan.tensors = [(tensor, _storage_uses(tensor)) for tensor in state.values()]
    return tensor_record({k: v.detach() for k, v in state.items()}, partial(LentTensorArray, loan=loan))


@contextmanager
def consumed_at_once() -> Iterator[None]:
    """A host's promise: each reply made inside is read before the model that made it changes.

    :func:`model_reply` lends the model's tensors inside it. On leaving, a model tensor that something
    still references (a kept reply, a tensor or a view taken from it) moves to a copy of its values, so
    that whoever kept the lent values keeps them, unchanged and readable.
    """
    loans: list[_Loan] = []
    _lending.append(loans)
    try:
        yield
    finally:
        _lending.pop()
        for loan in loans:
            for tensor, uses in loan.tensors:
                if _storage_uses(tensor) > uses:
                    tensor.data = tensor.data.clone()
                    loan.settled = True
            loan.tensors.clear()


class _Loan:
    """The model tensors one reply lent, with their storages' use counts before; settled once kept."""

    __slots__ = ("settled", "tensors")

    def __init__(self) -> None:
        self.tensors: list[tuple[torch.Tensor, int]] = []
        self.settled = False  # the model moved to copies: the lent storages are no longer written


_lending: list[list[_Loan]] = []  # the open consumed_at_once scopes, innermost last


def _storage_uses(tensor: torch.Tensor) -> int:
    """How many tensors (the temporary storage handle included) share ``tensor``'s storage."""
    return int(torch._C._storage_Use_Count(tensor.untyped_storage()._cdata))


class LentTensorArray(TensorArray):
    """A :class:`TensorArray` over a model's own tensor, valid while the model leaves it unchanged.

    Made by :func:`model_reply` inside :func:`consumed_at_once`. Reading it after the model wrote the
    tensor in place (trained or loaded again) raises ``RuntimeError``; it pickles as a plain copy.
    """

    __qualname__ = "Array"

    def __init__(self, tensor: torch.Tensor, loan: _Loan) -> None:
        super().__init__(tensor)
        self.__dict__.update(_version=tensor._version, _loan=loan)

    @property
    def _tensor(self) -> torch.Tensor:  # type: ignore[override]
        tensor: torch.Tensor = self.__dict__["_tensor"]
        if tensor._version != self.__dict__["_version"] and not self.__dict__["_loan"].settled:
            raise RuntimeError(
                "a train reply lent the model's tensors and the model changed before the reply was read: "
                "the host must read each reply before it runs the next client"
            )
        return tensor

    @override
    def __reduce__(self) -> tuple[Any, ...]:
        return (_owned_copy, (self._tensor,))


def _owned_copy(tensor: torch.Tensor) -> TensorArray:
    """A TensorArray of its own copy of ``tensor`` (what a lent array unpickles to)."""
    return TensorArray(tensor.clone())


def load_record(model: nn.Module, record: ArrayRecord) -> None:
    """Copy an ArrayRecord into the model in place.

    Copy an ArrayRecord into the model in place (dtypes follow the model; the same keys, as
    ``load_state_dict(strict=True)`` requires).
    """
    state = model_state(model)
    values = {k: tensor_of(v) for k, v in record.items()}
    if state.keys() != values.keys() or any(t.shape != values[k].shape for k, t in state.items()):
        model.load_state_dict(values, strict=True)  # raises, naming the keys or shapes
    with torch.no_grad():
        for key, target in state.items():
            target.copy_(values[key])


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters and buffers by name, cached while they stay the same tensors.

    ``model.state_dict(keep_vars=True)`` (the parameters and buffers themselves), kept while the model holds
    the same ones: building a state dict costs more than a small client's copy of it.
    """
    tensors = (*map(id, model.parameters()), *map(id, model.buffers()))
    found = _states.get(id(model))
    if found is None or found[0] != tensors:
        found = _states[id(model)] = (tensors, model.state_dict(keep_vars=True))
        weakref.finalize(model, _states.pop, id(model), None)
    return found[1]


_states: dict[int, tuple[tuple[int, ...], dict[str, torch.Tensor]]] = {}  # id(model) -> (ids of its tensors, state)


def to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ArrayRecord as NumPy arrays."""
    return {k: v.numpy() for k, v in record.items()}


def from_numpy(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """NumPy arrays as an ArrayRecord."""
    return ArrayRecord({k: torch.from_numpy(np.asarray(v, order="C")) for k, v in arrays.items()})


def record_bytes(record: ArrayRecord) -> int:
    """Bytes of an ArrayRecord's serialized arrays (what crosses the wire)."""
    return sum(a.num_bytes() if isinstance(a, TensorArray) else len(a.data) for a in record.values())


def payload_bytes(content: RecordDict) -> int:
    """Bytes of the payload a message carries: array data plus 8 bytes per config/metric value."""
    total = 0
    for record in content.values():
        if isinstance(record, ArrayRecord):
            total += record_bytes(record)
        elif isinstance(record, (ConfigRecord, MetricRecord)):
            total += 8 * sum(len(v) if isinstance(v, (list, bytes, str)) else 1 for v in record.values())
    return total


def shape_mismatch(reference: ArrayRecord, candidate: ArrayRecord) -> str | None:
    """Why ``candidate`` cannot stand in for ``reference`` (keys or shapes), or None."""
    if set(reference.keys()) != set(candidate.keys()):
        missing = sorted(set(reference.keys()) - set(candidate.keys()))
        extra = sorted(set(candidate.keys()) - set(reference.keys()))
        return f"array keys differ (missing {missing[:3]}, unexpected {extra[:3]})"
    for key, ref in reference.items():
        if tuple(candidate[key].shape) != tuple(ref.shape):
            return f"array '{key}' has shape {tuple(candidate[key].shape)}, expected {tuple(ref.shape)}"
        if candidate[key].dtype != ref.dtype:
            return f"array '{key}' has dtype {candidate[key].dtype}, expected {ref.dtype}"
    return None


def non_finite_metric(metrics: Any) -> str | None:
    """Name of the first metric that is a non-finite number (or holds one), or None."""
    for key, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            return key
    return None


def train_reply_problem(
    content: RecordDict,
    model_record: str,
    model_problem: Callable[[ArrayRecord], str | None],
    checked_elsewhere: Collection[str] = (),
) -> str | None:
    """Why a train reply's content cannot be aggregated, or None.

    Its model ArrayRecord ``model_record`` and 'metrics' present, a positive 'num-examples', finite metrics
    and arrays (but the model's arrays named in ``checked_elsewhere``, whose finiteness the caller tests), and
    no ``model_problem`` (keys, shapes against the global model).
    """
    model, metrics = content.get(model_record), content.get(METRICS)
    if not isinstance(model, ArrayRecord) or not isinstance(metrics, MetricRecord):
        return f"malformed reply: needs an '{model_record}' ArrayRecord and a 'metrics' MetricRecord"
    examples = metrics.get(NUM_EXAMPLES, 0)
    if not isinstance(examples, (int, float)) or not math.isfinite(examples) or examples <= 0:
        return "malformed reply: 'num-examples' missing or not a positive number"
    bad_metric = non_finite_metric(metrics)
    if bad_metric:
        return f"returned a non-finite metric '{bad_metric}'"
    mismatch = model_problem(model)
    if mismatch:
        return f"returned {mismatch}"
    for name, record in content.items():
        if not isinstance(record, ArrayRecord):
            continue
        bad = non_finite(record, skip=checked_elsewhere if name == model_record else ())
        if bad:
            return f"returned NaN/Inf in '{name}/{bad}'"
    return None


def non_finite(record: ArrayRecord, skip: Collection[str] = ()) -> str | None:
    """Name of the first array (but those in ``skip``) holding NaN or Inf, or None."""
    for key, arr in record.items():
        if key in skip:
            continue
        values = tensor_of(arr)
        # A sum is finite when every term is (the exact test runs only where it is not: overflow).
        if (
            values.is_floating_point()
            and not math.isfinite(float(values.sum()))
            and not bool(torch.isfinite(values).all())
        ):
            return key
    return None


def weighted_average(records: list[ArrayRecord], weights: list[float]) -> ArrayRecord:
    """Element-wise weighted mean of ArrayRecords with the same keys (float64 accumulation).

    Each array keeps its dtype; integer buffers (e.g. BatchNorm's step counter) are rounded.
    """
    total = float(sum(weights))
    out: dict[str, torch.Tensor] = {}
    for key in records[0].keys():
        acc = torch.zeros(tuple(records[0][key].shape), dtype=torch.float64)
        for record, w in zip(records, weights):
            acc.add_(tensor_of(record[key]), alpha=w / total)
        out[key] = cast_like(acc, tensor_of(records[0][key]).dtype)
    return tensor_record(out)


def cast_like(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A float64 accumulation back to a model dtype (integer buffers rounded)."""
    return (values.round() if not dtype.is_floating_point else values).to(dtype)
