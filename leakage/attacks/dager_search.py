"""DAGER (Petrov et al., NeurIPS 2024): exact recovery of a decoder's text batch from an honest server's gradient.

Two facts make it work (:mod:`leakage.attacks.spans`). A linear layer's weight gradient lies in the span of
its inputs, so a candidate input can be tested by its distance to that span. And in a causal decoder
(GPT-2) the input of the first attention block at position ``i`` is ``LayerNorm(wte[token] + wpe[i])``: it
depends on that token only, and the second block's input at ``i`` depends on tokens ``1..i`` only. So:

1. for every position, every vocabulary token is tested against the span of block 0's ``c_attn`` inputs
   (its weight gradient); the survivors are each position's candidate tokens;
2. sequences grow left to right: each prefix is extended by the next position's candidates, the model
   runs on the extended prefixes up to block 1's LayerNorm, and an extension is kept when that input lies
   in the span of block 1's ``c_attn`` inputs; a prefix with no extension is a finished sequence.

**Exact only where proven.** A recovered sequence is reported exact only when every one of its tokens
passed both span tests (distance <= ``tol``) and the recovered batch accounts for both spans: its distinct
first-block inputs (one per distinct token and position) and its distinct second-block inputs (one per
distinct prefix) are linearly independent and exactly as many as each span's rank. Anything else (a
span that fills the space because the batch's tokens approach the hidden size, a search cut at
``max_prefixes``, more or fewer sequences than the batch holds) leaves every sequence "not exact", with a
note saying why. Assumes right padding (pad positions then get no gradient and stay out of both spans) and
a client without dropout (dropout makes the inputs random: nothing then passes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch
from torch import Tensor, nn

from leakage.attacks.spans import Span, independent_rank, input_span, layernorm_distances

#: relative distance to a span below which a candidate passes. Measured (float32 client gradients, GPT-2
#: random init, d = 768): the batch's own tokens at most ~1e-5, other tokens >= 0.1 while the batch's tokens
#: stay 20 or more below the hidden size
DISTANCE_TOL = 1e-3
#: singular values of a weight gradient above this fraction of the largest count towards its rank. Measured
#: (float32 client gradients, GPT-2 random init, d = 128 and 768): the numerical zeros sit at or below 4e-8 of
#: the largest, the batch's weakest directions at 4e-5 or above (block 1 of a random-init model, whose
#: prefix-dependent part is small)
RANK_TOL = 1e-6


class _Reached(Exception):
    """Raised by a forward hook to stop the model once the layer it watches has run."""


class DecoderLayers:
    """Where DAGER reads a GPT-2 decoder (``transformers``' ``GPT2Model`` alone or inside a head such as
    ``GPT2ForSequenceClassification`` or ``GPT2LMHeadModel``): the first two blocks' inputs and the names of
    their ``c_attn`` weight gradients. Anything else is a one-line ``ValueError``."""

    def __init__(self, model: nn.Module) -> None:
        from transformers import GPT2LMHeadModel, GPT2Model

        found = [(name, m) for name, m in model.named_modules() if isinstance(m, GPT2Model)]
        if not found:
            raise ValueError(f"DAGER attacks a GPT-2 decoder (transformers' GPT2Model or a GPT-2 head model); "
                             f"got {type(getattr(model, 'model', model)).__name__}: give it a GPT-2 model")
        name, self.body = found[0]
        blocks = len(self.body.h)
        if blocks < 3 and not isinstance(model, (GPT2Model, GPT2LMHeadModel)):
            # a sequence classifier reads its last block at the last real token only: block 1's gradient then
            # holds that token's query and a few key/value directions, not the span of its inputs
            raise ValueError("DAGER needs a GPT-2 classifier with at least 3 blocks (its last block is read at the "
                             f"last token only, so block 1 must not be the last); this one has {blocks}")
        if blocks < 2:
            raise ValueError(f"DAGER needs a decoder with at least 2 blocks (it tests the inputs of blocks 0 and 1); "
                             f"this one has {blocks}")
        self.model = model
        names: dict[int, str] = {}
        for n, p in model.named_parameters():
            names.setdefault(id(p), n)
        attn = [self.body.h[i].attn.c_attn for i in (0, 1)]
        #: the shared gradients DAGER reads: block 0's and block 1's c_attn weights ``[d, 3d]`` (a LoRA-wrapped
        #: layer's is its ``base_layer.weight``)
        self.grad_names = tuple(names[id(getattr(a, "base_layer", a).weight)] for a in attn)
        #: or, where a client trains only LoRA adapters (:mod:`leakage.engine.lora`), the adapters' A weights
        #: ``[r, d]`` of each block's c_attn (empty without adapters)
        self.lora_names = tuple(tuple(names[id(m.weight)] for m in getattr(a, "lora_A", {}).values()) for a in attn)
        self.vocab_size = self.body.wte.weight.shape[0]
        self.max_positions = self.body.wpe.weight.shape[0]

    def span_gradients(self, gradients: Mapping[str, Tensor]) -> list[tuple[Tensor, bool, str]]:
        """Block 0's and block 1's gradient whose columns span the attention inputs, with ``rows_are_inputs``
        and where it comes from: the c_attn weight's ``[d, 3d]``, else (a client that trains only LoRA adapters)
        the adapters' A weights ``[r, d]`` stacked: ``dL/dA = s (G B^T)^T X`` lies in the inputs' span as well,
        with rank at most ``r``. Neither shared: a one-line ValueError."""
        out = []
        for name, lora in zip(self.grad_names, self.lora_names):
            if name in gradients:
                out.append((gradients[name], True, "c_attn"))
            elif lora and all(n in gradients for n in lora):
                A = torch.cat([gradients[n] for n in lora])
                if not bool(A.ne(0).any()):
                    raise ValueError(f"the LoRA A gradient of {name.rsplit('.', 2)[0]} is all zeros (a fresh adapter: "
                                     "B = 0 makes dL/dA = 0): DAGER has no span to read until B has been trained")
                out.append((A, False, "LoRA A"))
            else:
                raise ValueError(f"the shared update has no gradient for {name}" + (" nor its LoRA A adapter" if lora else "")
                                 + ": DAGER reads blocks 0 and 1's attention-input gradients (share them, or attack a "
                                 "model that trains them)")
        return out

    def room(self, block: int) -> int:
        """The dimension of the space block ``block``'s attention inputs can fill: ``d``, or ``d - 1`` when its
        LayerNorm has no bias (an untrained one): its outputs then sum to 0 along ``gamma^-1``."""
        ln = self.body.h[block].ln_1
        d = ln.normalized_shape[0]
        return d if ln.bias is not None and bool(ln.bias.detach().abs().max() > 0) else d - 1

    @torch.no_grad()
    def first_inputs(self, position: int, tokens: Optional[Tensor] = None) -> Tensor:
        """Block 0's attention input at ``position`` for ``tokens`` (default: the whole vocabulary) ``[m, d]``."""
        wte = self.body.wte.weight if tokens is None else self.body.wte.weight[tokens]
        return self.body.h[0].ln_1(wte + self.body.wpe.weight[position])

    @torch.no_grad()
    def first_distances(self, span: Span, positions: int) -> Tensor:
        """Every vocabulary token's distance to ``span`` as block 0's input at positions ``0..positions-1``
        ``[positions, V]`` (float64), in closed form (:func:`leakage.attacks.spans.layernorm_distances`)."""
        return layernorm_distances(self.body.h[0].ln_1, self.body.wte.weight, self.body.wpe.weight[:positions], span)

    @torch.no_grad()
    def extend(self, cache: Optional[tuple[Tensor, Tensor]], parent: Tensor, tokens: Tensor,
               chunk: int = 1024) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Block 1's attention input for each prefix ``parent`` (a row of ``cache``) extended by ``tokens``
        ``[e]`` -> ``[e, d]``, and block 0's keys and values of the extended prefixes (the new ``cache``,
        ``([e, heads, p + 1, head_dim]`` twice). ``cache`` None: the prefixes are empty (position 0)."""
        from transformers import DynamicCache

        seen: list[Tensor] = []

        def stop(module, inputs, output):
            seen.append(output[:, -1])
            raise _Reached

        keys, values = [], []
        hook = self.body.h[1].ln_1.register_forward_hook(stop)
        try:
            for idx in torch.arange(len(tokens)).split(chunk):
                kv = DynamicCache(config=self.body.config)
                if cache is not None:
                    kv.update(cache[0][parent[idx]], cache[1][parent[idx]], 0)
                try:
                    self.body(input_ids=tokens[idx, None], cache=kv, use_cache=True)
                except _Reached:
                    pass
                keys.append(kv.layers[0].keys)
                values.append(kv.layers[0].values)
        finally:
            hook.remove()
        return torch.cat(seen), (torch.cat(keys), torch.cat(values))

    @torch.no_grad()
    def second_inputs(self, prefixes: list[list[int]]) -> Tensor:
        """Block 1's attention input at the last position of each prefix (a list of token ids) ``[m, d]``."""
        device = self.body.wte.weight.device
        rows = []
        for q in prefixes:
            cache = None
            for i, t in enumerate(q):
                row, cache = self.extend(cache, torch.zeros(1, dtype=torch.long, device=device),
                                         torch.tensor([t], device=device))
            rows.append(row)
        return torch.cat(rows)


@dataclass
class DagerResult:
    """What DAGER recovered from one shared update: ``sequences`` (token ids, no padding; ``[]`` for a slot it
    could not fill), ``exact`` per sequence (proven as the module docstring says), each sequence's worst
    span distance over both tests, both spans' ranks, their dimension, each position's number of candidate
    tokens after the first test, notes saying why a result is not exact, and the seconds it took."""

    sequences: list[list[int]]
    exact: list[bool]
    distances: list[float]
    ranks: tuple[int, int]
    dim: int
    candidates: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _accounts(rows: Tensor, span: Span, independent: bool) -> tuple[bool, int]:
    """Whether the rows (each in the span) span all of it and, if ``independent``, are exactly as many as its
    rank; and their rank."""
    rank = independent_rank(rows, RANK_TOL)
    return rank == span.rank and (not independent or rows.shape[0] == span.rank), rank


@torch.no_grad()
def dager_decoder(model: nn.Module, gradients: Mapping[str, Tensor], batch_size: int, seq_len: int,
                  pad_token_id: Optional[int] = None, tol: float = DISTANCE_TOL, rank_tol: float = RANK_TOL,
                  max_prefixes: int = 20000, max_extensions: int = 200000) -> DagerResult:
    """Recover the ``batch_size`` token sequences (at most ``seq_len`` tokens each, right-padded with
    ``pad_token_id``, which is never a candidate) behind one shared update of a GPT-2 decoder.

    ``gradients``: the shared gradient by parameter name (the client's batch-mean gradient or any
    multiple of it; only blocks 0 and 1's ``c_attn`` weights are read). ``tol``: the span test's
    relative distance; ``rank_tol``: the spans' rank threshold; the search stops (and nothing is exact)
    when more than ``max_prefixes`` prefixes survive a position, or when a position would test more than
    ``max_extensions`` extensions (prefixes times candidates: the cost of a step)."""
    start = time.perf_counter()
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
    layers = DecoderLayers(model)
    if seq_len > layers.max_positions:
        raise ValueError(f"seq_len {seq_len} exceeds the model's {layers.max_positions} positions")
    sources = layers.span_gradients(gradients)
    spans = [input_span(g, rank_tol, rows) for g, rows, _ in sources]
    dim = spans[0].dim
    notes: list[str] = []
    for i, ((g, _, where), span) in enumerate(zip(sources, spans)):
        if where == "LoRA A" and span.rank >= g.shape[0]:
            notes.append(f"block {i}'s span is read from its LoRA A gradient, whose rank {span.rank} is the adapter's "
                         "full rank: where the batch has more independent inputs than that, the span holds only part "
                         "of them and their tokens fail the test")
    full = [span.rank >= layers.room(i) for i, span in enumerate(spans)]
    for i, span in enumerate(spans):
        if full[i]:
            what = "(token, position) pairs" if i == 0 else "distinct prefixes"
            notes.append(f"block {i}'s span fills all {layers.room(i)} dimensions its inputs can take (the batch holds "
                         f"about that many {what} or more): the span test passes every token and proves nothing")
    device = next(model.parameters()).device

    # 1. each position's candidates: every vocabulary token against block 0's span
    screen = layers.first_distances(spans[0], seq_len) <= tol
    if pad_token_id is not None and 0 <= pad_token_id < layers.vocab_size:
        screen[:, pad_token_id] = False
    candidates: list[Tensor] = []
    for p in range(seq_len):
        found = torch.nonzero(screen[p]).flatten()
        if found.numel():  # confirmed on the inputs themselves
            found = found[spans[0].distances(layers.first_inputs(p, found.to(device))).cpu() <= tol]
        if found.numel() == 0:
            break
        candidates.append(found.to(device))

    # 2. grow sequences left to right, each extension tested against block 1's span
    finished: list[tuple[list[int], float]] = []
    rows1: dict[tuple[int, ...], Tensor] = {}  # block 1's input of every surviving prefix
    prefixes = torch.zeros(1, 0, dtype=torch.long, device=device)
    worst = torch.zeros(1, dtype=torch.float64)
    cache = None
    cut = False
    for p, cands in enumerate(candidates):
        k = len(cands)
        if len(prefixes) * k > max_extensions:
            notes.append(f"{len(prefixes)} prefixes x {k} candidates at position {p} exceed max_extensions="
                         f"{max_extensions}: search stopped")
            cut = True
            break
        parent = torch.arange(len(prefixes), device=device).repeat_interleave(k)
        tokens = cands.repeat(len(prefixes))
        inputs, kv = layers.extend(cache, parent, tokens)
        d1 = spans[1].distances(inputs).cpu()
        d0 = spans[0].distances(layers.first_inputs(p, tokens)).cpu()
        ok = (d1 <= tol) & (d0 <= tol)
        extended = torch.zeros(len(prefixes), dtype=torch.bool)
        extended[parent.cpu()[ok]] = True
        if p > 0:
            finished += [(prefixes[i].tolist(), float(worst[i])) for i in torch.nonzero(~extended).flatten()]
        keep = torch.nonzero(ok).flatten()
        prefixes = torch.cat([prefixes[parent[keep.to(device)]], tokens[keep.to(device), None]], dim=1)
        worst = torch.maximum(worst[parent.cpu()[keep]], torch.maximum(d0, d1)[keep])
        cache = (kv[0][keep.to(device)], kv[1][keep.to(device)])
        for q, row in zip(prefixes.tolist(), inputs[keep.to(device)]):
            rows1[tuple(q)] = row
        if len(prefixes) > max_prefixes:
            notes.append(f"{len(prefixes)} prefixes passed position {p} (more than max_prefixes={max_prefixes}): "
                         "search stopped")
            cut = True
            break
        if len(prefixes) == 0:
            break
    finished += [(prefixes[i].tolist(), float(worst[i])) for i in range(len(prefixes)) if prefixes.shape[1]]

    # 3. keep batch_size sequences (best first) and prove what can be proven
    finished.sort(key=lambda s: (s[1], -len(s[0])))
    if len(finished) > batch_size:
        notes.append(f"{len(finished)} sequences passed every test for a batch of {batch_size}: "
                     f"kept the {batch_size} with the smallest distances")
    elif len(finished) < batch_size:
        notes.append(f"{len(finished)} distinct sequences recovered for a batch of {batch_size} "
                     "(the rest repeat a recovered sequence or one of its prefixes, which the spans cannot tell apart)")
    kept = finished[:batch_size]
    proven = not cut and not any(full) and len(kept) > 0
    if proven:
        pairs = sorted({(tok, i) for seq, _ in kept for i, tok in enumerate(seq)})
        rows0 = torch.cat([layers.first_inputs(i, torch.tensor([t], device=device)) for t, i in pairs])
        prefs = sorted({tuple(seq[: i + 1]) for seq, _ in kept for i in range(len(seq))})
        layer_rows = (rows0, torch.stack([rows1[q] for q in prefs]))
        for i, (rows, span) in enumerate(zip(layer_rows, spans)):
            # block 0's inputs need not be independent (an untrained LayerNorm is linear up to scale, so
            # token and position embeddings add); block 1's distinct prefixes are, below the hidden size
            good, rank = _accounts(rows, span, independent=i == 1)
            if not good:
                proven = False
                notes.append(f"the recovered batch gives {rows.shape[0]} distinct inputs of rank {rank} to block {i}, "
                             f"whose span has rank {span.rank}: the batch is not accounted for")
    sequences = [s for s, _ in kept] + [[] for _ in range(batch_size - len(kept))]
    distances = [d for _, d in kept] + [float("nan")] * (batch_size - len(kept))
    exact = [proven and bool(s) for s in sequences]
    return DagerResult(sequences=sequences, exact=exact, distances=distances, ranks=(spans[0].rank, spans[1].rank),
                       dim=dim, candidates=[len(c) for c in candidates], notes=notes,
                       seconds=time.perf_counter() - start)
