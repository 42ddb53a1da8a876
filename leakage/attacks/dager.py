"""DAGER as an attack of the package: a GPT-2 classifier's text batch recovered exactly from an honest server's
update, in closed form (Petrov et al., NeurIPS 2024).

The search is :func:`leakage.attacks.dager_search.dager_decoder` (the span tests and the left-to-right
extension, run per victim); this module makes it a :class:`~leakage.attacks.closedform.ClosedFormAttack`
that ``leakage fit`` (``attack: dager``), the Python API and the sweep run like any other. Its
reconstructions are token ids ``[V, B, n]`` (floats holding integers, right-padded with the pad token: the
text kind's model input); the labels are solved from the classifier head's gradient once the sequences are
known (:func:`head_labels`). A victim is reported exact only when DAGER proves every sequence (the span
tests and the rank accounting) AND the recovered batch with those labels reproduces the whole observed
update (:data:`~leakage.attacks.closedform.CERTIFIED_RESIDUAL`): two proofs, the second of which a
defended update also fails.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from leakage.attacks.closedform import ClosedFormAttack
from leakage.attacks.dager_encoder import EncoderLayers, dager_encoder
from leakage.attacks.dager_search import DISTANCE_TOL, RANK_TOL, DecoderLayers, dager_decoder
from leakage.attacks.labels import label_gradients, last_linear
from leakage.records import Observation


@torch.no_grad()
def head_labels(model: nn.Module, ids: Tensor, weight_grad: Tensor, bias_grad: Optional[Tensor],
                pad_token_id: Optional[int]) -> Tensor:
    """Each sequence's label ``[B]`` from the classifier head's batch-mean gradient, once the token ids
    ``[B, n]`` are known.

    With cross-entropy averaged over the batch, the head's gradient is ``dW = (P - Y)^T A / B`` (``A``
    ``[B, d]``: the head's input at each sequence's last real token; ``P``: the softmax outputs; both
    computable from ``ids``), so ``Y^T A = P^T A - B dW`` is solved for the one-hot rows ``Y`` by least squares
    (``[A, 1]`` and the bias gradient too when the head has a bias) and each row's largest entry kept."""
    name, layer = last_linear(model)
    seen: list[Tensor] = []
    hook = layer.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    try:
        logits = model(ids.float())
    finally:
        hook.remove()
    A = seen[-1]
    if A.dim() == 3:  # read at every position: keep each sequence's last real token (right padding)
        real = ids != pad_token_id if pad_token_id is not None else torch.ones_like(ids, dtype=torch.bool)
        last = (real.long().sum(1) - 1).clamp_min(0)
        A = A[torch.arange(A.shape[0], device=A.device), last]
    A, P, B = A.double(), torch.softmax(logits.double(), dim=1), ids.shape[0]
    M = P.T @ A - B * weight_grad.double().to(A.device)
    if bias_grad is not None:
        A = torch.cat([A, torch.ones(B, 1, dtype=A.dtype, device=A.device)], dim=1)
        M = torch.cat([M, (P.sum(0) - B * bias_grad.double().to(A.device))[:, None]], dim=1)
    Y = torch.linalg.lstsq(A.T.cpu(), M.T.cpu(), driver="gelsd").solution
    return torch.nan_to_num(Y, nan=0.0).argmax(dim=1).to(ids.device)


class DagerAttack(ClosedFormAttack):
    """DAGER: a GPT-2 classifier's batch of token sequences recovered exactly from its shared update, by
    testing candidate tokens against the spans of blocks 0 and 1's attention-input gradients (see
    :mod:`leakage.attacks.dager_search`); a BERT classifier's batch of 1 or 2 sequences by testing whole
    candidate sequences (:mod:`leakage.attacks.dager_encoder`). Honest-but-curious server, FedSGD; text only.

    Args:
        model: a GPT-2 or BERT sequence classifier with at least 3 blocks: the built-in ``gpt2_small`` or
            ``bert_base``, or any ``torch.nn.Module`` given by import path that holds a ``transformers``
            ``GPT2Model`` or ``BertModel``. Other models are refused in one line.
        input_shape: linked from the data by the CLI (``[seq_len]``).
        num_classes: linked from the data by the CLI.
        model_seed: seed of a built-in model's weights.
        model_weights: optional weights file (``.pt``/``.pth``, ``.ckpt``, ``.safetensors``), read
            without unpickling.
        tol: the span test's relative distance below which a candidate passes; in (0, 1).
        rank_tol: singular values above this fraction of the largest count towards a span's rank; in (0, 1).
        max_extensions: the most extensions (prefixes times candidates) one position of a decoder's search may
            test: beyond it the search stops and the victim is not exact.
    """

    def __init__(
        self,
        model: Union[nn.Module, str] = "gpt2_small",
        input_shape: Sequence[int] = (16,),
        num_classes: int = 2,
        model_seed: int = 1234,
        model_weights: Optional[str] = None,
        tol: float = DISTANCE_TOL,
        rank_tol: float = RANK_TOL,
        max_extensions: int = 200000,
    ) -> None:
        super().__init__()
        for name, value in (("tol", tol), ("rank_tol", rank_tol)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
        if isinstance(max_extensions, bool) or not isinstance(max_extensions, int) or max_extensions < 1:
            raise ValueError(f"max_extensions must be an integer >= 1, got {max_extensions!r}")
        self._settings_and_target(model, input_shape, num_classes, model_seed, model_weights)
        self.encoder = self._family(self.target)  # a model DAGER cannot read is refused now, in one line

    @staticmethod
    def _family(model: nn.Module) -> bool:
        """Whether ``model`` is a BERT encoder (else a GPT-2 decoder); anything else is a one-line ValueError."""
        from transformers import BertModel

        if any(isinstance(m, BertModel) for m in model.modules()):
            EncoderLayers(model)
            return True
        DecoderLayers(model)
        return False

    def receive(self, model: nn.Module) -> None:
        super().receive(model)
        self.encoder = self._family(self.target)

    def check_observation(self, observation: Observation) -> None:
        super().check_observation(observation)
        if getattr(observation.kind, "name", None) != "text":
            raise ValueError("DAGER recovers text: give it a text source (BundledText or TextFile) and a GPT-2 model")
        if observation.client is not None and observation.client.local_steps != 1:
            raise ValueError("DAGER reads one gradient (FedSGD): under FedAvg the weights move between local steps "
                             "and the spans hold every step's inputs; use --data.client null")
        if self.encoder and observation.batch_size > 2:
            raise ValueError(f"DAGER on a BERT encoder takes batches of 1 or 2 sequences (it tests whole candidate "
                             f"sequences), got batch_size {observation.batch_size}: use a GPT-2 model for larger batches")

    def _pad(self, observation: Observation) -> Optional[int]:
        pad = getattr(observation.kind, "pad_token_id", None)
        return getattr(self.target, "pad_token_id", None) if pad is None else pad

    def solve(self, observation: Observation) -> tuple[Tensor, Tensor, Tensor]:
        V, B, (n,) = observation.num_victims, observation.batch_size, tuple(observation.input_shape)
        hp, pad = self.hparams, self._pad(observation)
        grads = label_gradients(observation)
        head, layer = last_linear(self.target)
        x = torch.full((V, B, n), 0 if pad is None else pad, dtype=torch.long)
        labels = torch.zeros(V, B, dtype=torch.long)
        proven = torch.zeros(V, dtype=torch.bool)
        for v in range(V):
            mine = {k: g[v] for k, g in grads.items()}
            if self.encoder:
                found = dager_encoder(self.target, mine, B, n, pad_token_id=pad, tol=hp.tol, rank_tol=hp.rank_tol)
            else:
                found = dager_decoder(self.target, mine, B, n, pad_token_id=pad, tol=hp.tol, rank_tol=hp.rank_tol,
                                      max_extensions=hp.max_extensions)
            for i, seq in enumerate(found.sequences):
                x[v, i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            self.notes += [f"victim {v}: {note}" for note in found.notes]
            if not any(found.sequences):
                self.unread[v] = True
                continue
            proven[v] = all(found.exact)
            if f"{head}.weight" not in grads:  # a client that did not train the head (its trainable patterns)
                self.notes.append(f"victim {v}: labels not read: the update has no gradient for {head}.weight "
                                  "(the client did not train the classifier head); reported as class 0")
                continue
            bias = grads.get(f"{head}.bias") if layer.bias is not None else None
            labels[v] = head_labels(self.target, x[v].to(self.device), grads[f"{head}.weight"][v],
                                    None if bias is None else bias[v], pad).cpu()
        return x.float(), labels, proven

    def describe(self) -> str:
        which = "BERT" if getattr(self, "encoder", False) else "GPT-2"
        return f"DAGER: span tests of {which}'s attention-input gradients, exact text recovery (closed form)"
