"""SCooL (Li et al., ICML 2023).

SCooL: "Structured Cooperative Learning with Graphical Model Priors" (Li, Zhou, Tian, Tao; ICML 2023,
arXiv:2306.09595; official code github.com/ShuangtongLi/SCooL).

Decentralized, personalized. A cooperation graph W (row i: how much client i learns from each
peer) is latent, with a graphical-model prior p(W); models and graph are fitted by variational
EM (``clients/scool.py`` for the client side). Each active client i scores the models it
receives on its own training data (loss_i(theta_j): how well peer j's model explains i's data),
forms its row W_i. from those losses and the prior logits the server sends, and mixes.
Two variants (``strategy.variant``):
- ``official`` (default; as github.com/ShuangtongLi/SCooL, SCooL_SBM.py / SBM.py /
  SCooL_ATTENTION.py): SBM edges W_ij = sigmoid((prior log-odds_ij - loss_i(theta_j)) /
  likelihood_scale), row-normalised over self and peers (attention: softmax of prior logits minus
  loss / likelihood_scale, as the fedsim variant); losses on one batch of ``batch_size`` samples (the official
  test_fast); update
  mixing theta_i <- theta_i(start) + sum_j W_ij delta_j, delta_j = peer j's last trained minus
  start model, then plain local SGD (no regulariser). SBM prior: memberships re-initialised every
  round and fitted by ``sbm_iterations`` mean-field passes to the loss matrix, block link
  probabilities fixed at 0.8 / 0.2; pairs not observed (after the graph is fixed) are left out of
  the fit (the official code scores them as loss 0, a perfect fit: not copied).
- ``fedsim`` (this project's first reading of the paper): W_i. = softmax(E[log B] - loss /
  likelihood_scale) on ``likelihood_samples`` samples; model mixing theta_i <- sum_j W_ij theta_j
  (the minimiser of the graph-weighted regulariser) then local SGD on loss_i + reg_weight/2 *
  sum_{j != i} W_ij ||theta_i - theta_j||^2; SBM memberships and block probabilities refitted to
  the reported rows and kept across rounds.
Deliberate differences from the official code, both variants: client i's row uses its own data and
the peers' models, loss_i(theta_j) (the official simulation, holding every model and dataset in one
process, scores client i's model on client j's data, the transpose), since a decentralized client
has no other client's data; the prior it uses is the one fitted to the previous round's losses (the
official fits the current round's before mixing: one more message round per round); the personal
model evaluated each round is the trained one, before the next round's mixing.
The prior (``strategy.prior``):
- ``dirac``: W is fixed to the uniform weights of the configured topology (no E-step): SCooL
  recovers D-PSGD with that graph;
- ``sbm``: a stochastic block model with ``sbm_blocks`` blocks (memberships phi, block link
  probabilities B); prior logit of edge i->j: E[log B - log(1 - B)] (official) or E[log B] (fedsim);
- ``attention``: prior logits q_i . k_j / sqrt(d) from learnt query/key maps of each client's
  model update (its classifier head's change since the common start), fitted to the posteriors.
Before round ``fix_graph_round`` a client receives every peer that has shared a model; then the
graph is fixed to each client's ``num_neighbours`` strongest peers (the official code's
fix_graph_epoch/mask_fraction), which bounds the traffic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from scipy.special import digamma
from typing_extensions import override

from fedsim.decentralized import PeerParams, PeerToPeerStrategy, peer_records
from fedsim.params import spec
from fedsim.protocols import scool as protocol
from fedsim.protocols.scool import GRAPH, IDS, LOSSES, PRIOR, USE_LIKELIHOOD, WEIGHTS
from fedsim.records import config_of, has_record, integers, numbers, shape_mismatch
from fedsim.seeding import rng
from fedsim.strategy import ClientReply


def sbm_update(
    adjacency: np.ndarray, observed: np.ndarray, phi: np.ndarray, blocks: np.ndarray, iterations: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean-field and M-steps of a stochastic block model of the cooperation graph.

    Mean-field updates of the block memberships ``phi`` (N x K) and M-steps of the block link probabilities
    ``blocks`` (K x K) of a stochastic block model, given soft edges ``adjacency`` (N x N in [0, 1]) where
    ``observed`` is True.
    """
    m = observed.astype(np.float64)
    a = np.clip(adjacency, 0.0, 1.0) * m
    not_a = (1.0 - np.clip(adjacency, 0.0, 1.0)) * m
    phi = phi.copy()
    for _ in range(iterations):
        log_b, log_not_b = np.log(blocks), np.log1p(-blocks)
        prior = np.log(phi.mean(0) + 1e-12)
        for i in range(len(phi)):  # coordinate ascent: each update raises the bound
            logits = (
                prior
                + a[i] @ (phi @ log_b.T)
                + not_a[i] @ (phi @ log_not_b.T)
                + a[:, i] @ (phi @ log_b)
                + not_a[:, i] @ (phi @ log_not_b)
            )
            phi[i] = np.exp(logits - logits.max())
            phi[i] /= phi[i].sum()
        pair = np.einsum("ik,jh,ij->kh", phi, phi, m)
        linked = np.einsum("ik,jh,ij->kh", phi, phi, a)
        blocks = np.clip(linked / np.maximum(pair, 1e-12), 0.01, 0.99)
    return phi, blocks


def sbm_prior(phi: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """N x N prior logits E[log B_{z_i z_j}] under the memberships phi."""
    return phi @ np.log(blocks) @ phi.T


def sbm_log_odds(phi: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """The SBM prior's log-odds of every edge.

    N x N prior log-odds E[log B_{z_i z_j} - log(1 - B_{z_i z_j})] under the memberships phi (the official
    SBM.optimize_W prior term).
    """
    return phi @ (np.log(blocks) - np.log1p(-blocks)) @ phi.T


def sbm_fit_official(
    y: np.ndarray,
    observed: np.ndarray,
    blocks: np.ndarray,
    scale: float,
    iterations: int,
    generator: np.random.Generator,
) -> np.ndarray:
    """SBM memberships fitted as the official SBM.variational_inference does.

    Memberships phi (N x K) fitted as the official SBM.variational_inference does, from fresh random
    memberships each call: ``iterations`` times, edges W = sigmoid((log-odds + Y) / scale) (Y = -loss, model i
    on client j, where ``observed``), then one mean-field update of every phi_i in random order against W and
    the fixed block probabilities, and gamma_i = 1 + phi_i.
    """
    n, k = len(y), len(blocks)
    gamma = (2.0 / k) * (1.0 - generator.random((n, k)))
    phi = np.stack([generator.dirichlet(np.maximum(g, 1e-3)) for g in gamma])
    log_b, log_not_b = np.log(blocks), np.log1p(-blocks)
    m = observed.astype(np.float64)
    np.fill_diagonal(m, 0.0)
    for _ in range(iterations):
        w = 1.0 / (1.0 + np.exp(-(sbm_log_odds(phi, blocks) + np.where(observed, y, 0.0)) / scale))
        for i in generator.permutation(n):
            logits = (
                (m[i] * w[i]) @ (phi @ log_b.T)
                + (m[:, i] * w[:, i]) @ (phi @ log_b)
                + (m[i] * (1 - w[i])) @ (phi @ log_not_b.T)
                + (m[:, i] * (1 - w[:, i])) @ (phi @ log_not_b)
                + digamma(gamma[i])
                - digamma(gamma[i].sum())
            )
            phi[i] = np.exp(logits - logits.max())
            phi[i] /= phi[i].sum()
            gamma[i] = 1.0 + phi[i]
    return phi


def attention_logits(features: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """N x N attention scores (F q)(F k)^T / sqrt(d)."""
    return (features @ query) @ (features @ key).T / query.shape[1] ** 0.5


class SCooL(PeerToPeerStrategy):
    """SCooL: decentralized personalized learning over an inferred cooperation graph.

    The server relays the peers' shared records and keeps the graph's prior (SBM or attention),
    refitted from the rows the clients report.

    Notes
    -----
    The client scores each received peer model on its own data, forms its row of the cooperation
    graph from those losses and the prior logits in ``GRAPH`` (``IDS``, ``PRIOR``), mixes, trains,
    and replies with its shared record (``PEER_RECORD``: the model, or in the official variant the
    model and its update) and its row (``GRAPH``: ``IDS``, ``WEIGHTS``, ``LOSSES``).

    References
    ----------
    Li et al., "Structured Cooperative Learning with Graphical Model Priors", ICML 2023,
    arXiv:2306.09595.
    """

    params: Params

    paper = "Li et al., ICML 2023 (arXiv:2306.09595)"

    def __init__(self, cfg: Any, param_keys: list[str], params: Params) -> None:
        super().__init__(cfg, param_keys, params)
        s, n = params, int(cfg.num_clients)
        self.posterior = np.full((n, n), np.nan)  # last reported q(W_i.) rows
        self.loss = np.full((n, n), np.nan)  # loss[j, i]: client i's last reported loss of peer j's model
        self.fixed: dict[int, list[int]] = {}
        r = rng(cfg.seed, "scool-init")
        self.phi = r.dirichlet(np.ones(int(s.sbm_blocks)), size=n)
        k = int(s.sbm_blocks)
        self.blocks = np.full((k, k), 0.2) + 0.6 * np.eye(k)
        self.query: np.ndarray | None = None
        self.key: np.ndarray | None = None

    # -- graph ------------------------------------------------------------------------------------
    @override
    def neighbours(self, client_id: int, server_round: int) -> list[int]:
        if self.params.prior == "dirac":
            return super().neighbours(client_id, server_round)
        others = [c for c in sorted(self.shared) if c != client_id]
        if client_id in self.fixed:
            return [c for c in self.fixed[client_id] if c in self.shared]
        return others

    def model_of(self, client_id: int) -> ArrayRecord:
        """The trained model ``client_id`` shared last (official variant: the ``model.`` part)."""
        shared = self.shared[client_id]
        return protocol.unpack(shared, protocol.MODEL) if self.params.variant == "official" else shared

    @override
    def model_problem(self, record: ArrayRecord) -> str | None:
        reference = self.initial if self.initial is not None else self.global_arrays
        assert reference is not None  # configure_train set it
        if self.params.variant != "official":
            return shape_mismatch(reference, record)
        expected = {protocol.MODEL + k for k in reference.keys()} | {protocol.UPDATE + k for k in reference.keys()}
        if set(record.keys()) != expected:
            return f"a shared record without the official variant's '{protocol.MODEL}*' and '{protocol.UPDATE}*' arrays"
        for prefix in (protocol.MODEL, protocol.UPDATE):
            mismatch = shape_mismatch(reference, protocol.unpack(record, prefix))
            if mismatch:
                return f"'{prefix}' part whose {mismatch}"
        return None

    def features(self) -> torch.Tensor:
        """Per client: its classifier head's change since the common start, L2-normalised.

        Per client: its classifier head's change since the common start, L2-normalised (zeros for clients that
        have not shared a model).
        """
        assert self.initial is not None
        head = [k for k in self.initial.keys() if k.startswith("classifier.")] or list(self.initial.keys())[-2:]
        start = np.concatenate([self.initial[k].numpy().ravel() for k in head]).astype(np.float64)
        rows = []
        for cid in range(int(self.cfg.num_clients)):
            if cid in self.shared:
                model = self.model_of(cid)
                delta = np.concatenate([model[k].numpy().ravel() for k in head]) - start
                rows.append(delta / max(float(np.linalg.norm(delta)), 1e-12))
            else:
                rows.append(np.zeros_like(start))
        return torch.tensor(np.stack(rows), dtype=torch.float32)

    def prior_logits(self) -> np.ndarray:
        """The prior's log-odds of every edge of the cooperation graph (clients x clients)."""
        s, n = self.params, int(self.cfg.num_clients)
        if s.prior == "sbm":
            return sbm_log_odds(self.phi, self.blocks) if s.variant == "official" else sbm_prior(self.phi, self.blocks)
        if s.prior == "attention" and self.query is not None and self.key is not None:
            with torch.no_grad():
                return (
                    attention_logits(self.features(), torch.from_numpy(self.query), torch.from_numpy(self.key))
                    .double()
                    .numpy()
                )
        return np.zeros((n, n))

    @override
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.round_prior: np.ndarray | None = None  # computed once per round, on first use
        return super().configure_train(server_round, arrays, config, grid)

    @override
    def train_content(self, client_id: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        content = super().train_content(client_id, arrays, config)
        peers = sorted(peer_records(content))
        if peers:
            if self.round_prior is None:
                self.round_prior = self.prior_logits()
            ids = [client_id, *peers]
            logits = self.round_prior[client_id, ids]
            content[GRAPH] = ConfigRecord(
                {IDS: ids, PRIOR: [float(v) for v in logits], USE_LIKELIHOOD: self.params.prior != "dirac"}
            )
        return content

    # -- replies ----------------------------------------------------------------------------------
    @override
    def reply_problem(self, msg: Message) -> str | None:
        problem = super().reply_problem(msg)
        if problem is not None or not has_record(msg.content, GRAPH, ConfigRecord):
            return problem
        graph = config_of(msg.content, GRAPH)
        n = int(self.cfg.num_clients)
        malformed = "malformed 'graph' record: needs 'ids' of clients and as many finite 'weights' and 'losses'"
        try:
            ids, weights, losses = (numbers(graph, k) for k in (IDS, WEIGHTS, LOSSES))
        except TypeError:
            return malformed
        if (
            not len(ids) == len(weights) == len(losses)
            or any(not 0 <= int(i) < n for i in ids)
            or not np.all(np.isfinite(weights))
            or not np.all(np.isfinite(losses))
        ):
            return malformed
        return None

    @override
    def aggregate(self, server_round: int, replies: list[ClientReply]) -> tuple[ArrayRecord, MetricRecord]:
        arrays, metrics = super().aggregate(server_round, replies)
        reported = [r for r in replies if has_record(r.content, GRAPH, ConfigRecord)]
        for reply in reported:
            graph = config_of(reply.content, GRAPH)
            row = np.full(self.posterior.shape[1], np.nan)
            ids = integers(graph, IDS)
            row[ids] = numbers(graph, WEIGHTS)
            self.posterior[reply.client_id] = row
            self.loss[ids, reply.client_id] = numbers(graph, LOSSES)
        if reported:
            self.fit_prior(server_round)
            metrics["graph-self-weight"] = float(
                np.mean([numbers(config_of(r.content, GRAPH), WEIGHTS)[0] for r in reported])
            )
            # the inferred graph: row i = client i's last reported weights (0 where it had none), row-major
            metrics["graph-weights"] = [float(w) for w in np.nan_to_num(self.posterior, nan=0.0).ravel()]
        s = self.params
        if s.prior != "dirac" and server_round >= int(s.fix_graph_round) and not self.fixed:
            self.fix_graph()  # the first round from fix_graph_round on whose replies carry graph rows
        return arrays, metrics

    def fit_prior(self, server_round: int) -> None:
        """Refit the prior's parameters to the reported losses (official) or posterior rows (fedsim)."""
        s = self.params
        observed = np.isfinite(self.posterior)
        np.fill_diagonal(observed, False)
        if s.prior == "sbm" and s.variant == "official":
            seen = np.isfinite(self.loss)
            generator = rng(self.cfg.seed, "scool-sbm", server_round)
            self.phi = sbm_fit_official(
                -np.nan_to_num(self.loss),
                seen,
                self.blocks,
                float(s.likelihood_scale),
                int(s.sbm_iterations),
                generator,
            )
        elif s.prior == "sbm":
            # soft edges: each row's weights relative to its strongest peer
            peer = np.where(observed, self.posterior, 0.0)
            adjacency = peer / np.maximum(peer.max(1, keepdims=True), 1e-12)
            self.phi, self.blocks = sbm_update(adjacency, observed, self.phi, self.blocks, int(s.sbm_iterations))
        elif s.prior == "attention":
            self.fit_attention(observed | (np.eye(len(observed), dtype=bool) & np.isfinite(self.posterior)))

    def fit_attention(self, observed: np.ndarray) -> None:
        """Refit the attention prior's query and key on the ``observed`` edges of the reported rows."""
        s = self.params
        features = self.features()
        if self.query is None or self.key is None:
            g = torch.Generator().manual_seed(int(rng(self.cfg.seed, "scool-attention").integers(2**31)))
            scale = features.shape[1] ** -0.5
            self.query = (torch.randn(features.shape[1], int(s.attention_dim), generator=g) * scale).numpy()
            self.key = (torch.randn(features.shape[1], int(s.attention_dim), generator=g) * scale).numpy()
        query = torch.tensor(self.query, requires_grad=True)
        key = torch.tensor(self.key, requires_grad=True)
        target = torch.tensor(np.nan_to_num(self.posterior), dtype=torch.float32)
        mask = torch.tensor(observed)
        rows = mask.any(1)
        optimizer = torch.optim.Adam([query, key], lr=float(s.attention_lr))
        for _ in range(int(s.attention_steps)):
            logits = attention_logits(features, query, key).masked_fill(~mask, float("-inf"))
            log_p = torch.log_softmax(logits[rows], dim=1).masked_fill(~mask[rows], 0.0)
            loss = -(target[rows] * log_p).sum(1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        self.query, self.key = query.detach().numpy(), key.detach().numpy()

    def fix_graph(self) -> None:
        """From now on each client talks to its ``num_neighbours`` strongest peers only."""
        k = int(self.params.num_neighbours)
        for cid, row in enumerate(self.posterior):
            peers = [(w, j) for j, w in enumerate(row) if j != cid and np.isfinite(w)]
            if peers:
                self.fixed[cid] = sorted(j for _, j in sorted(peers, key=lambda t: (-t[0], t[1]))[:k])

    # -- checkpoints ------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            {
                "posterior": self.posterior,
                "loss": self.loss,
                "fixed": self.fixed,
                "phi": self.phi,
                "blocks": self.blocks,
                "query": self.query,
                "key": self.key,
            }
        )
        return state

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for name in ("posterior", "loss", "fixed", "phi", "blocks", "query", "key"):
            if name in state:
                setattr(self, name, state[name])
        self.fixed = {int(c): [int(j) for j in peers] for c, peers in self.fixed.items()}


@dataclass(kw_only=True)
class Params(PeerParams):
    """SCooL's hyperparameters (``configs/strategy/scool.yaml``)."""

    variant: Literal["official", "fedsim"] = spec(
        "official: update mixing, sigmoid edges, SBM refit per round; fedsim: model mixing"
    )
    prior: Literal["dirac", "sbm", "attention"] = spec("prior of the cooperation graph")
    fix_graph_round: int = spec("round after which each client keeps its strongest peers", ge=0)
    likelihood_scale: float = spec("temperature of the data-likelihood term", gt=0)
    likelihood_samples: int | None = spec("local samples each received model is scored on; null = one batch", ge=1)
    reg_weight: float = spec("weight of the graph regulariser", ge=0)
    sbm_blocks: int = spec("blocks of the stochastic block model", ge=1)
    sbm_iterations: int = spec("mean-field / M-step iterations per round", ge=1)
    attention_dim: int = spec("query/key size of the attention prior", ge=1)
    attention_lr: float = spec("Adam step size of the attention prior", gt=0)
    attention_steps: int = spec("Adam steps per round", ge=0)


STRATEGY = SCooL
