"""Decepticons (Fowl, Geiping et al., "Decepticons: Corrupted Transformers Breach Privacy in Federated
Learning for Language Models", ICLR 2023): a malicious server that changes a GPT-2 or BERT classifier's
weights (not its architecture) so that one update gives its text away.

:class:`DecepticonServer` rewrites the model it sends:

1. **Embeddings in separate subspaces.** The width ``d`` is cut into four parts: one "sink" dimension
   (where the imprint modules write, see 4), a *group* part, a *position* part and a *token* part. Every
   token embedding is kept on the token part only (its first coordinates, centred), every position
   embedding is a random code on the position part (centred) plus, for positions 0 and 1, a flag dimension each. A
   hidden state ``wte[t] + wpe[p]`` then carries its token and its position side by side.
2. **Block 0's attention copies the first two tokens.** Head ``k`` (``k`` = 0, 1) has a constant query, a
   key that reads a flag dimension set at position ``k`` only, and a value that projects the token part:
   every position from ``k`` on attends to position ``k`` alone and writes a projection of its
   sequence's token ``k`` into half ``k`` of the group part: a sentence-level code that every token of the
   sequence from position 1 on carries (in GPT-2, position 0 sees only itself: it carries the first half).
   breaching groups tokens by a sentence-level signal too.
3. **Attention off in the other imprinted blocks** (their output projection zeroed): the hidden state of
   each position passes them unchanged, except for the sink.
4. **Imprint (binned) feed-forward layers.** In each of the first ``blocks`` blocks, ``directions`` groups
   of ``num_bins`` units of the MLP each measure one random direction ``w`` of the normalised hidden state
   (its token and position parts), ``s (w . z - c_j)``, with ramped cuts ``c_j`` (quantiles of the
   measurement over random tokens and positions) and a large scale ``s`` so the GELU acts as a step; every unit writes only the sink dimension, with the same small
   weight, so every unit passes each token the same gradient back. Unit ``j`` then fires for the tokens
   measuring above ``c_j``, and ``(dW_j - dW_{j+1}) / (db_j - db_{j+1})`` is the normalised hidden state
   of the token alone in bin ``j`` (:class:`leakage.attacks.decepticons.DecepticonAttack` matches it to
   a token, a position and a group). The blocks after them are left as they were: their attention is
   what carries every position's gradient to the classifier (read at GPT-2's last token, BERT's first).
   BERT's blocks are post-LN: the imprint reads the attention's layer norm's output, and the layer norms
   of the embeddings and of the imprinted blocks are set to weight 1, bias 0 (its segment embeddings to 0).

The server is public to the attacker (it is the attacker): :meth:`DecepticonServer.layout` gives the
attack the subspaces, the codes and the layers.
"""

from __future__ import annotations

import copy
import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from leakage.federated.server import Server

#: the measurement's scale: GELU(s u) has derivative 1 (or 0) to float precision for |s u| > 6, so a token
#: measuring within ``6 / s`` of a cut is split between two bins (and rejected by the attack's match test)
MEASURE_SCALE = 1e6
#: the flag's value at position 0 (what block 0's key reads)
FLAG = 1.0
#: what the imprint units write to the sink, in all (their outputs' mean is about 1): small, so that the
#: sink barely moves the later blocks' layer norms (and their measurements)
SINK = 1e-3
#: random (token, position) samples per bin that the cuts are estimated from
SAMPLES_PER_BIN = 16
#: the group code's size, in units of a token embedding's
GROUP_SIZE = 0.5
#: the query of block 0's copy head: the score of position 0 over the others, times the flag's normalised value
QUERY = 100.0


def _int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _io(layer: nn.Module) -> Tensor:
    """A linear layer's weight as ``[in, out]`` (a view: ``transformers``' Conv1D stores it so, nn.Linear transposed)."""
    return layer.weight.T if isinstance(layer, nn.Linear) else layer.weight


class _Family:
    """Where a ``transformers`` GPT2Model or BertModel keeps what the server rewrites."""

    def __init__(self, model: nn.Module) -> None:
        from transformers import BertModel, GPT2Model

        found = [m for m in model.modules() if isinstance(m, (GPT2Model, BertModel))]
        if not found:
            raise ValueError(f"the Decepticons server rewrites a GPT-2 or BERT classifier (gpt2_tiny, gpt2_small, bert_tiny, "
                             f"bert_base or a model holding a transformers GPT2Model or BertModel), got {type(model).__name__}")
        base = self.base = found[0]
        self.bert = isinstance(base, BertModel)
        cfg = base.config
        self.d, self.heads = cfg.hidden_size, cfg.num_attention_heads
        if self.bert:
            emb = base.embeddings
            self.wte, self.wpe = emb.word_embeddings.weight, emb.position_embeddings.weight
            self.blocks = list(base.encoder.layer)
            self.zeroed = [emb.token_type_embeddings.weight]  # segment embeddings: off
            self.unit_norms = [emb.LayerNorm]  # the embedding's layer norm: weight 1, bias 0
        else:
            self.wte, self.wpe = base.wte.weight, base.wpe.weight
            self.blocks, self.zeroed, self.unit_norms = list(base.h), [], []

    def qkv(self, i: int) -> list[tuple[Tensor, Tensor]]:
        """Block ``i``'s query, key and value weights ``[d, d]`` (views, ``[in, out]``) and biases."""
        block, d = self.blocks[i], self.d
        if self.bert:
            att = block.attention.self
            return [(_io(m), m.bias) for m in (att.query, att.key, att.value)]
        c = block.attn.c_attn
        return [(c.weight[:, k * d:(k + 1) * d], c.bias[k * d:(k + 1) * d]) for k in range(3)]

    def attn_out(self, i: int) -> nn.Module:
        return self.blocks[i].attention.output.dense if self.bert else self.blocks[i].attn.c_proj

    def norms(self, i: int) -> list[nn.Module]:
        """Block ``i``'s layer norms the imprint needs at weight 1, bias 0."""
        b = self.blocks[i]
        return [b.attention.output.LayerNorm, b.output.LayerNorm] if self.bert else [b.ln_1, b.ln_2]

    def mlp(self, i: int) -> tuple[nn.Module, nn.Module]:
        """Block ``i``'s feed-forward layers: the one into the units, the one out of them."""
        b = self.blocks[i]
        return (b.intermediate.dense, b.output.dense) if self.bert else (b.mlp.c_fc, b.mlp.c_proj)


class DecepticonServer(Server):
    """Decepticons' malicious server for a GPT-2 or BERT text classifier (see the module docstring): embeddings in
    separate token, position and group subspaces, block 0's attention copying each sequence's first two tokens,
    and imprint (binned) feed-forward layers in the first ``blocks`` blocks.

    Args:
        num_bins: bins per measured direction, at least 2; ``directions x num_bins`` must fit the MLP's width
            (``4 d``). None: the width shared out, ``4 d // directions``. A token is read when it is alone in
            its bin in at least one direction of one block.
        blocks: how many blocks (from the first) carry an imprint; at least one block must stay as it was
            (its attention carries every position's gradient to the classifier).
        directions: the directions each imprinted block measures, each with its own bins (a token sharing
            a bin in one direction is often alone in another's).
        seed: the public seed of the codes, the projections and the measured directions.
    """

    name = "decepticons"
    malicious = True

    def __init__(self, num_bins: Optional[int] = None, blocks: int = 1, directions: int = 2, seed: int = 0) -> None:
        super().__init__()
        self.num_bins = None if num_bins is None else _int("num_bins", num_bins, 2)
        self.blocks = _int("blocks", blocks, 1)
        self.directions = _int("directions", directions, 1)
        self.seed = _int("seed", seed, 0)
        self._layout: Optional[dict] = None

    # ------------------------------------------------------------------ layout
    def layout(self) -> dict:
        """What the attack needs to read the update (public: the server chose it): the subspaces' index
        tensors (``token``, ``position``, ``group``, ``sink``, ``flag``), the token embedding on the token
        part ``[V, T]``, the position codes ``[n, P]``, the imprints (layer parameter name, first unit) and
        their bins per direction, once :meth:`send` ran."""
        if self._layout is None:
            raise ValueError("the Decepticons server has not sent a model yet: run the attack on an observation "
                             "whose data used --data.server DecepticonServer")
        return self._layout

    @staticmethod
    def parts(d: int) -> dict[str, Tensor]:
        """The split of the width ``d``: sink (dim 0), flag, group, position, token dimensions."""
        group = max(16, d // 8)
        position = max(16, d // 4)
        if d < 3 + group + position + 16:
            raise ValueError(f"the Decepticons server needs a model width of at least 51, got {d}")
        start = 3
        out = {"sink": torch.tensor([0]), "flag": torch.tensor([1, 2])}
        for name, size in (("group", group), ("position", position)):
            out[name] = torch.arange(start, start + size)
            start += size
        out["token"] = torch.arange(start, d)
        return out

    def send(self, model: nn.Module, input_shape: Sequence[int]) -> nn.Module:
        if len(tuple(input_shape)) != 1:
            raise ValueError(f"the Decepticons server attacks text (token ids [n]), got inputs of shape {tuple(input_shape)}")
        n = int(input_shape[0])
        sent = copy.deepcopy(model)
        fam = _Family(sent)
        d, L, heads = fam.d, len(fam.blocks), fam.heads
        width = _io(fam.mlp(0)[0]).shape[1]
        R = self.directions
        K = width // R if self.num_bins is None else self.num_bins
        if K * R > width or K < 2:
            raise ValueError(f"{R} directions of {K} bins do not fit the MLP's width {width}: use num_bins <= "
                             f"{width // R} or fewer directions")
        if self.blocks >= L:
            raise ValueError(f"blocks {self.blocks} leaves no block of the model's {L} unchanged: use at most {L - 1}")
        if n > fam.wpe.shape[0]:
            raise ValueError(f"sequences of {n} tokens exceed the model's {fam.wpe.shape[0]} positions")
        if heads < 2:
            raise ValueError("the Decepticons server needs a model with at least 2 attention heads (block 0 copies the "
                             "first two tokens, one head each)")
        gen = torch.Generator().manual_seed(self.seed)
        parts = self.parts(d)
        tok, pos, grp = parts["token"], parts["position"], parts["group"]
        sink, flag = int(parts["sink"]), parts["flag"].tolist()
        with torch.no_grad():
            wte, wpe = fam.wte, fam.wpe
            token_part = wte[:, : len(tok)].clone()
            token_part -= token_part.mean(dim=1, keepdim=True)
            wte.zero_()
            wte[:, tok] = token_part.to(wte)
            scale = float(token_part.norm(dim=1).mean())
            codes = torch.randn(n, len(pos), generator=gen)
            codes -= codes.mean(dim=1, keepdim=True)
            codes *= scale / codes.norm(dim=1, keepdim=True)
            wpe.zero_()
            wpe[:n, pos] = codes.to(wpe)
            for p in fam.zeroed:
                p.zero_()
            for norm in fam.unit_norms + fam.norms(0):
                norm.weight.fill_(1.0), norm.bias.zero_()
            # block 0: head k (k = 0, 1) copies a projection of token k's token part into half k of the group part
            dh = d // heads
            g = min(dh, len(grp) // 2)
            (q, qb), (k_, kb), (v, vb) = fam.qkv(0)
            out = fam.attn_out(0)
            for p in (q, qb, k_, kb, v, vb, _io(out), out.bias):
                p.zero_()
            for k in range(2):
                if k < n:
                    wpe[k, flag[k]] = FLAG
                qb[k * dh] = QUERY * math.sqrt(dh)  # head k's query
                k_[flag[k], k * dh] = 1.0  # its key reads flag k
                project = torch.randn(len(tok), g, generator=gen) / math.sqrt(len(tok))
                v[tok[:, None], k * dh + torch.arange(g)[None, :]] = project.to(wte)
                _io(out)[k * dh + torch.arange(g), grp[k * g:(k + 1) * g]] = 1.0
            # the group code at GROUP_SIZE of a token's size: it marks the sequence, the measurement leaves it out
            # the sample the cuts are quantiles of: SAMPLES_PER_BIN per bin (quantiles of too few samples bunch the bins)
            pair = torch.randint(0, wte.shape[0], (min(max(4000, SAMPLES_PER_BIN * K), 65536), 2), generator=gen)
            h = wte[pair.to(wte.device)] + wpe[:2]
            z = torch.nn.functional.layer_norm(h.float(), (d,))
            heads_out = torch.stack([(z[:, k] @ v.float())[:, k * dh:(k + 1) * dh] for k in range(2)], 1)
            copied = (heads_out.flatten(1) @ _io(out).float()[: 2 * dh])
            norm = float(copied[:, grp].norm(dim=1).mean())
            _io(out).mul_(GROUP_SIZE * scale / norm)
            copied *= GROUP_SIZE * scale / norm
            # the imprinted blocks
            layers, directions, cuts = [], [], []
            where = torch.randint(0, n, (len(pair),), generator=gen)
            sample = torch.nn.functional.layer_norm(
                (wte[torch.randint(0, wte.shape[0], (len(pair),), generator=gen)] + wpe[where]).float().cpu()
                + copied.cpu(), (d,))
            for i in range(self.blocks):
                if i > 0:
                    _io(fam.attn_out(i)).zero_(), fam.attn_out(i).bias.zero_()
                for norm_layer in fam.norms(i):
                    norm_layer.weight.fill_(1.0), norm_layer.bias.zero_()
                fc, proj = fam.mlp(i)
                _io(proj).zero_(), proj.bias.zero_()
                prefix = self._prefix(sent, fc)
                for r in range(R):
                    w = torch.zeros(d)
                    measured = torch.cat([tok, pos])
                    w[measured] = torch.randn(len(measured), generator=gen)
                    w[measured] -= w[measured].mean()
                    w /= w.norm()
                    c = self._cuts(sample, w, K)
                    units = slice(r * K, (r + 1) * K)
                    _io(fc)[:, units] = (MEASURE_SCALE * w)[:, None].to(fc.weight)
                    fc.bias[units] = (-MEASURE_SCALE * c).to(fc.bias)
                    _io(proj)[units, sink] = SINK / (R * K * MEASURE_SCALE)
                    layers.append((prefix, r * K))
                    directions.append(w)
                    cuts.append(c)
        self._layout = {"token": tok, "position": pos, "group": grp[: 2 * g], "sink": sink, "flag": flag,
                        "embedding": token_part.float(), "codes": codes.float(), "layers": layers, "bins": K,
                        "directions": directions, "cuts": cuts, "seq_len": n,
                        "rows": isinstance(fam.mlp(0)[0], nn.Linear)}
        self.model = sent
        return sent

    @staticmethod
    def _prefix(model: nn.Module, layer: nn.Module) -> str:
        return next(name for name, m in model.named_modules() if m is layer)

    @staticmethod
    def _cuts(sample: Tensor, w: Tensor, K: int) -> Tensor:
        """The ``K`` cuts of direction ``w``: the first far below every measurement, the rest the quantiles
        ``1/K .. (K-1)/K`` of ``w . z`` over the ``sample``."""
        m = sample @ w
        inner = torch.quantile(m.double(), torch.arange(1, K, dtype=torch.double) / K).float()
        return torch.cat([inner[:1] - 10 * m.std() - 10, inner])

    def describe(self) -> str:
        bins = "the MLP's width shared out" if self.num_bins is None else f"{self.num_bins} bins each"
        return (f"malicious server: Decepticons (token/position/group subspaces; imprint MLPs measuring {self.directions} "
                f"directions, {bins}, in the first {self.blocks} block{'s' if self.blocks > 1 else ''}; seed {self.seed})")

    def settings(self) -> dict:
        return {"server": self.name, "num_bins": self.num_bins, "blocks": self.blocks, "directions": self.directions,
                "seed": self.seed}
