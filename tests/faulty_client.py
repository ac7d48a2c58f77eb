"""A client module for fault tests: client 1 returns NaN weights, client 2 raises."""

import torch
from flwr.app import RecordDict

from clients.base import Client
from fedsim.records import model_to_record


class FaultyClient(Client):
    def train(self, content: RecordDict, server_round: int) -> RecordDict:
        if self.env.client_id == 2:
            raise RuntimeError("simulated crash on client 2")
        reply = super().train(content, server_round)
        if self.env.client_id == 1:
            with torch.no_grad():
                next(self.env.model.parameters()).fill_(float("nan"))
            reply["arrays"] = model_to_record(self.env.model)
        return reply


CLIENT = FaultyClient
