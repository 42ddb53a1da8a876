"""DAGER on an encoder (BERT) for batches of one or two sequences: whole candidate sequences tested at once.

Block 0's input at position ``p`` is ``LayerNorm(word[token] + position[p] + segment[0])`` (the embeddings'
LayerNorm), so each position's candidate tokens come from the span of layer 0's query weight gradient as for a
decoder (:func:`leakage.attacks.spans.layernorm_distances`). An encoder is bidirectional: layer 1's input at
any position depends on the whole sequence, so sequences cannot grow left to right. Instead every sequence
the candidates allow (every length, one candidate per position) is tested whole against the span of layer 1's
query weight gradient, and a sequence is kept when all its positions pass; a sequence of one batch never
depends on the other's, so a batch of two needs no pairing. The number of candidate sequences is the product
of the positions' candidate counts, which stays small for one or two sequences (each position has at most two
true tokens) and explodes beyond: ``max_sequences`` caps it, and a capped search proves nothing.

Exact as for the decoder (:mod:`leakage.attacks.dager_search`): every token passed both tests and the recovered
batch accounts for both spans (its inputs to layer 0 span all of layer 0's span; its inputs to layer 1, one per
position of each sequence, are independent and exactly as many as layer 1's rank).
"""

from __future__ import annotations

import itertools
import time
from typing import Mapping, Optional

import torch
from torch import Tensor, nn

from leakage.attacks.dager_search import DISTANCE_TOL, RANK_TOL, DagerResult
from leakage.attacks.spans import independent_rank, input_span, layernorm_distances


class _Reached(Exception):
    """Raised by a hook to stop the model once layer 1's input is known."""


class EncoderLayers:
    """Where DAGER reads a BERT encoder (``transformers``' ``BertModel`` alone or inside a head such as
    ``BertForSequenceClassification``): layers 0 and 1's inputs and their query weight gradients' names.
    Anything else is a one-line ``ValueError``."""

    def __init__(self, model: nn.Module) -> None:
        from transformers import BertModel

        found = [(name, m) for name, m in model.named_modules() if isinstance(m, BertModel)]
        if not found:
            raise ValueError("the encoder DAGER attacks a BERT model (transformers' BertModel or a BERT head model); "
                             f"got {type(getattr(model, 'model', model)).__name__}")
        name, self.body = found[0]
        layers = len(self.body.encoder.layer)
        if layers < 3:  # a classifier reads its last layer at one position: layer 1 must not be the last
            raise ValueError(f"DAGER needs a BERT classifier with at least 3 layers; this one has {layers}")
        prefix = f"{name}." if name else ""
        self.grad_names = tuple(f"{prefix}encoder.layer.{i}.attention.self.query.weight" for i in (0, 1))
        emb = self.body.embeddings
        self.vocab_size, self.max_positions = emb.word_embeddings.weight.shape[0], emb.position_embeddings.weight.shape[0]

    def _offsets(self, n: int) -> Tensor:
        emb = self.body.embeddings
        return emb.position_embeddings.weight[:n] + emb.token_type_embeddings.weight[0]

    def first_distances(self, span, positions: int) -> Tensor:
        emb = self.body.embeddings
        return layernorm_distances(emb.LayerNorm, emb.word_embeddings.weight, self._offsets(positions), span)

    @torch.no_grad()
    def inputs(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Layers 0 and 1's inputs ``[m, L, d]`` for unpadded sequences ``ids`` ``[m, L]``."""
        seen: list[Tensor] = []

        def stop(module, args, kwargs):
            seen.append(args[0] if args else kwargs["hidden_states"])
            raise _Reached

        hooks = [self.body.encoder.layer[i].register_forward_pre_hook(stop, with_kwargs=True) for i in (1,)]
        first = self.body.embeddings(input_ids=ids)
        try:
            self.body(input_ids=ids, attention_mask=torch.ones_like(ids))
        except _Reached:
            pass
        finally:
            for h in hooks:
                h.remove()
        return first, seen[0]


@torch.no_grad()
def dager_encoder(model: nn.Module, gradients: Mapping[str, Tensor], batch_size: int, seq_len: int,
                  pad_token_id: Optional[int] = None, tol: float = DISTANCE_TOL, rank_tol: float = RANK_TOL,
                  max_sequences: int = 1 << 17) -> DagerResult:
    """Recover the ``batch_size`` (1 or 2) token sequences, at most ``seq_len`` tokens each and right-padded with
    ``pad_token_id`` under the attention mask, behind one shared update of a BERT classifier (see the module
    docstring). ``max_sequences``: the most candidate sequences tested; beyond it nothing is exact."""
    start = time.perf_counter()
    if batch_size not in (1, 2):
        raise ValueError(f"DAGER's encoder search takes batches of 1 or 2 sequences, got {batch_size}")
    layers = EncoderLayers(model)
    if not 1 <= seq_len <= layers.max_positions:
        raise ValueError(f"seq_len must be in [1, {layers.max_positions}], got {seq_len}")
    missing = [n for n in layers.grad_names if n not in gradients]
    if missing:
        raise ValueError(f"the shared update has no gradient for {missing[0]}: DAGER reads layers 0 and 1's query "
                         "weight gradients")
    spans = [input_span(gradients[n], rank_tol, rows_are_inputs=False) for n in layers.grad_names]
    notes: list[str] = []
    full = [s.rank >= s.dim - 1 for s in spans]
    for i in range(2):
        if full[i]:
            notes.append(f"layer {i}'s span fills its {spans[i].dim} dimensions: the span test proves nothing")
    screen = layers.first_distances(spans[0], seq_len) <= tol
    if pad_token_id is not None and 0 <= pad_token_id < layers.vocab_size:
        screen[:, pad_token_id] = False
    candidates = []
    for p in range(seq_len):
        found = torch.nonzero(screen[p]).flatten()
        if found.numel() == 0:
            break
        candidates.append(found.tolist())
    total = sum(_product(len(c) for c in candidates[:L]) for L in range(1, len(candidates) + 1))
    passed: list[tuple[list[int], float]] = []
    rows: dict[tuple[int, ...], tuple[Tensor, Tensor]] = {}
    cut = total > max_sequences
    if cut:
        notes.append(f"{total} candidate sequences exceed max_sequences={max_sequences}: search stopped")
    else:
        device = next(model.parameters()).device
        for L in range(1, len(candidates) + 1):
            seqs = torch.tensor(list(itertools.product(*candidates[:L])), dtype=torch.long, device=device)
            for part in seqs.split(1024):
                x0, x1 = layers.inputs(part)
                d0 = spans[0].distances(x0.flatten(0, 1)).view(len(part), L).amax(1).cpu()
                d1 = spans[1].distances(x1.flatten(0, 1)).view(len(part), L).amax(1).cpu()
                for i in torch.nonzero((d0 <= tol) & (d1 <= tol)).flatten().tolist():
                    key = tuple(part[i].tolist())
                    passed.append((list(key), float(max(d0[i], d1[i]))))
                    rows[key] = (x0[i], x1[i])
    passed.sort(key=lambda s: s[1])
    if len(passed) != batch_size:
        notes.append(f"{len(passed)} sequences passed every test for a batch of {batch_size}")
    kept = passed[:batch_size]
    proven = not cut and not any(full) and len(kept) == batch_size
    if proven:
        firsts = torch.cat([rows[tuple(s)][0] for s, _ in kept])
        seconds = torch.cat([rows[tuple(s)][1] for s, _ in kept])
        firsts = torch.unique(firsts, dim=0)
        r0, r1 = independent_rank(firsts, RANK_TOL), independent_rank(seconds, RANK_TOL)
        if r0 != spans[0].rank or r1 != spans[1].rank or seconds.shape[0] != spans[1].rank:
            proven = False
            notes.append(f"the recovered batch's inputs have ranks {r0}, {r1} (and {seconds.shape[0]} inputs to "
                         f"layer 1); the spans {spans[0].rank}, {spans[1].rank}: the batch is not accounted for")
    sequences = [s for s, _ in kept] + [[] for _ in range(batch_size - len(kept))]
    distances = [d for _, d in kept] + [float("nan")] * (batch_size - len(kept))
    return DagerResult(sequences=sequences, exact=[proven and bool(s) for s in sequences], distances=distances,
                       ranks=(spans[0].rank, spans[1].rank), dim=spans[0].dim,
                       candidates=[len(c) for c in candidates], notes=notes, seconds=time.perf_counter() - start)


def _product(counts) -> int:
    out = 1
    for c in counts:
        out *= c
    return out
