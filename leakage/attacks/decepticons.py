"""The Decepticons attack (Fowl, Geiping et al., ICLR 2023): text read off the imprint layers a
:class:`~leakage.federated.decepticons.DecepticonServer` planted in a GPT-2 or BERT classifier.

Every imprinted block's bins are cumulative (unit ``j`` sums the tokens measuring above cut ``j``, each
with the same backward signal in every unit), so neighbouring units differ by the tokens of one bin:
``z = (dW_j - dW_{j+1}) / (db_j - db_{j+1})``, the normalised hidden state of the token when it is alone
in its bin. Its token part is matched to the nearest token embedding (cosine, after centring: the layer
norm only shifts and scales it), its position part to the nearest position code, and its group part
(projections of its sequence's first two tokens, which block 0's attention copied) says which sequence
it belongs to. A bin is kept only when both matches are near perfect (cosine above :data:`MATCH`): a
bin holding two different tokens, or a token split between two bins, matches neither.

Tokens are grouped into sequences by their group code, and placed by their positions. A victim is
possibly exact when at least ``B`` groups were found (the largest ``B`` kept), with no position missing
or held by two tokens; it is reported exact only when, besides, the recovered batch reproduces the
whole update (:mod:`leakage.attacks.closedform`). Sequences with the same first two tokens share a
group code: their tokens cannot be told apart, and the victim is not exact.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from leakage.attacks.closedform import ClosedFormAttack
from leakage.attacks.dager import head_labels
from leakage.attacks.labels import last_linear
from leakage.attacks.malicious import MIN_RELATIVE_BIAS, _MaliciousAttack
from leakage.federated.decepticons import DecepticonServer
from leakage.records import Observation

#: a bin's token and position matches must both reach this cosine similarity
MATCH = 0.9999
#: two tokens carry the same group code (the same sequence) above this cosine similarity
SAME_GROUP = 0.999


def _unit(x: Tensor) -> Tensor:
    x = x - x.mean(dim=-1, keepdim=True)
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-30)


def read_bins(dW: Tensor, db: Tensor) -> tuple[Tensor, Tensor]:
    """The normalised hidden states ``[m, d]`` of the bins holding any token, and their bias differences
    ``[m]``, from one imprinted layer's gradient (``dW`` ``[K, d]``, ``db`` ``[K]``, cumulative)."""
    dW_bin = dW - torch.cat([dW[1:], torch.zeros_like(dW[:1])])
    db_bin = db - torch.cat([db[1:], torch.zeros_like(db[:1])])
    size = db_bin.abs()
    holds = (size > MIN_RELATIVE_BIAS * size.max()).nonzero().flatten() if size.numel() else size.long()
    return dW_bin[holds] / db_bin[holds, None], db_bin[holds]


def match(z: Tensor, table: Tensor, chunk: int = 512) -> tuple[Tensor, Tensor]:
    """Each row of ``z`` ``[m, k]``'s nearest row of ``table`` ``[N, k]`` by cosine after centring: (index, cosine)."""
    t = _unit(table.float())
    best, which = [], []
    for rows in _unit(z.float()).split(chunk):
        sims = rows @ t.T
        value, index = sims.max(dim=1)
        best.append(value)
        which.append(index)
    if not best:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0)
    return torch.cat(which), torch.cat(best)


def group_tokens(tokens: Tensor, positions: Tensor, groups: Tensor) -> list[dict[int, set[int]]]:
    """Tokens ``[m]`` at ``positions`` ``[m]`` grouped into sequences by their group codes ``[m, 2 g]`` (a
    projection of the sequence's first token, then of its second): the tokens from position 1 on by the
    whole code (greedy: a code within :data:`SAME_GROUP` of a group's first joins it), then each token at
    position 0 joins every group whose first half its own first half matches (else it is a sequence of one
    token). Per group, position -> tokens."""
    half = groups.shape[1] // 2
    first, second = _unit(groups[:, :half].float()), _unit(groups[:, half:].float())
    centres: list[tuple[Tensor, Tensor]] = []
    out: list[dict[int, set[int]]] = []
    for i in (positions > 0).nonzero().flatten().tolist():
        t, p = int(tokens[i]), int(positions[i])
        for k, (a, b) in enumerate(centres):
            if float(a @ first[i]) > SAME_GROUP and float(b @ second[i]) > SAME_GROUP:
                out[k].setdefault(p, set()).add(t)
                break
        else:
            centres.append((first[i], second[i]))
            out.append({p: {t}})
    for i in (positions == 0).nonzero().flatten().tolist():
        joined = [k for k, (a, _) in enumerate(centres) if float(a @ first[i]) > SAME_GROUP]
        for k in joined:
            out[k].setdefault(0, set()).add(int(tokens[i]))
        if not joined:
            centres.append((first[i], second[i]))
            out.append({0: {int(tokens[i])}})
    return out


def decode_update(layout: dict, grads: dict[str, Tensor], B: int, n: int, pad: int) -> tuple[Tensor, bool, list[str]]:
    """One victim's token ids ``[B, n]`` read off its update ``grads`` (parameter name -> gradient) by the
    server's ``layout`` (:meth:`~leakage.federated.decepticons.DecepticonServer.layout`): whether the
    read-out is clean (at least ``B`` groups, every position up to each sequence's last held by one token), and notes."""
    K = layout["bins"]
    found = []
    for layer, first in layout["layers"]:
        weight = grads[f"{layer}.weight"]  # nn.Linear: [4d, d]; Conv1D (GPT-2): [d, 4d]
        dW = (weight[first:first + K] if layout["rows"] else weight[:, first:first + K].T).double().cpu()
        db = grads[f"{layer}.bias"][first:first + K].double().cpu()
        z, _ = read_bins(dW, db)
        tokens, tok_sim = match(z[:, layout["token"]], layout["embedding"])
        positions, pos_sim = match(z[:, layout["position"]], layout["codes"])
        keep = (tok_sim > MATCH) & (pos_sim > MATCH)
        found.append((tokens[keep], positions[keep], z[keep][:, layout["group"]]))
    x = torch.full((B, n), pad, dtype=torch.long)
    groups = group_tokens(torch.cat([f[0] for f in found]), torch.cat([f[1] for f in found]),
                          torch.cat([f[2] for f in found]))
    groups.sort(key=lambda g: -len(g))
    notes: list[str] = []
    if len(groups) < B:
        notes.append(f"{len(groups)} sequence groups for {B} sequences (sequences with the same first two tokens share one, "
                     f"or none was read): {B - len(groups)} slots hold padding")
    elif len(groups) > B:
        notes.append(f"{len(groups)} sequence groups for {B} sequences: the {len(groups) - B} smallest were dropped")
    clean = len(groups) >= B  # groups beyond B: bins mixing a token shared by two sequences (the residual decides)
    for i, group in enumerate(groups[:B]):
        clean &= all(len(group.get(p, ())) == 1 for p in range(max(group) + 1))
        for p, toks in group.items():
            x[i, p] = min(toks)
    return x, clean, notes


class DecepticonAttack(_MaliciousAttack):
    """Read a GPT-2 or BERT classifier's text batch off a :class:`~leakage.federated.decepticons.DecepticonServer`'s
    imprint layers (module docstring): per bin the isolated hidden state, matched to a token, a position
    and a sequence. Text only, closed form.

    Args:
        model: the global GPT-2 or BERT classifier (the server rewrites it): ``gpt2_tiny``, ``gpt2_small``,
            ``bert_tiny``, ``bert_base`` or a module by import path holding a ``transformers`` GPT2Model or BertModel.
        input_shape, num_classes: linked from the data by the CLI (``[seq_len]``).
        model_seed, model_weights: the global model's weights.
    """

    server_kind, server_name = DecepticonServer, "decepticons"
    candidates = "bins holding one token"

    def __init__(self, model: Union[nn.Module, str] = "gpt2_tiny", input_shape: Sequence[int] = (16,),
                 num_classes: int = 2, model_seed: int = 1234, model_weights: Optional[str] = None) -> None:
        ClosedFormAttack.__init__(self)
        self._settings_and_target(model, input_shape, num_classes, model_seed, model_weights)

    def check_observation(self, observation: Observation) -> None:
        super().check_observation(observation)
        if getattr(observation.kind, "name", None) != "text":
            raise ValueError("the Decepticons attack reads text: give it a text source (BundledText or TextFile) "
                             "and a GPT-2 or BERT model")

    def solve(self, observation: Observation) -> tuple[Tensor, Tensor, Tensor]:
        server = self._server(observation)
        lay = server.layout()
        V, B, (n,) = observation.num_victims, observation.batch_size, tuple(observation.input_shape)
        pad = getattr(observation.kind, "pad_token_id", None)
        pad = getattr(self.target, "pad_token_id", 0) if pad is None else pad
        grads = observation.gradient_estimate()
        x = torch.full((V, B, n), pad, dtype=torch.long)
        possible = torch.zeros(V, dtype=torch.bool)
        for v in range(V):
            x[v], clean, notes = decode_update(lay, {k: g[v] for k, g in grads.items()}, B, n, pad)
            self.notes += [f"victim {v}: {note}" for note in notes]
            if bool((x[v] == pad).all()):
                self.unread[v] = True
                self.notes.append(f"victim {v}: no bin holds one token alone: nothing was read")
            possible[v] = clean and observation.client is None
        labels = torch.zeros(V, B, dtype=torch.long)
        head, layer = last_linear(self.target)
        label_grads = observation.gradient_estimate()
        for v in range(V):
            bias = label_grads.get(f"{head}.bias") if layer.bias is not None else None
            labels[v] = head_labels(self.target, x[v].to(self.device), label_grads[f"{head}.weight"][v],
                                    None if bias is None else bias[v], pad).cpu()
        return x.float(), labels, possible

    def describe(self) -> str:
        return "Decepticons: tokens read off a malicious server's imprint MLPs (closed form)"
