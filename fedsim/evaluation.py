"""Centralised evaluation of a model on a held-out set."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord
from torch import nn
from torch.nn import functional as F

from fedsim.data.local import LocalData
from fedsim.protocols.messages import ACCURACY, LOSS
from fedsim.records import load_record


@torch.no_grad()
def evaluate(
    model: nn.Module, data: LocalData, batch_size: int, device: torch.device, classes: list[int] | None = None
) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``data``.

    With ``classes``, also ``subset_accuracy``: the argmax taken over those classes only (SCooL's official
    accuracy, which scores a client's model among the labels it holds).
    """
    model.eval()
    loss_sum, correct, subset_correct = 0.0, 0, 0
    subset = torch.tensor(sorted(classes), device=device) if classes else None
    for x, y in data.batches(batch_size, device):
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        if subset is not None:
            subset_correct += (subset[logits[:, subset].argmax(1)] == y).sum().item()
    n = max(len(data), 1)
    result = {ACCURACY: correct / n, LOSS: loss_sum / n}
    if subset is not None:
        result["subset_accuracy"] = subset_correct / n
    return result


class ServerEvaluator:
    """Evaluates global ArrayRecords on the test set with one model instance."""

    def __init__(self, model: nn.Module, data: LocalData, batch_size: int, device: torch.device) -> None:
        self.model, self.data, self.batch_size, self.device = model, data, batch_size, device

    def __call__(self, arrays: ArrayRecord) -> dict[str, float]:
        """Accuracy and loss of the model ``arrays`` on the held-out test set."""
        load_record(self.model, arrays)
        return evaluate(self.model, self.data, self.batch_size, self.device)
