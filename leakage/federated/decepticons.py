"""Decepticons (Fowl, Geiping et al., "Decepticons: Corrupted Transformers Breach Privacy in Federated
Learning for Language Models", ICLR 2023): a malicious server that changes a GPT-2 classifier's weights
(not its architecture) so that one update gives its text away.

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
   sequence from position 1 on carries (position 0 sees only itself; it carries the first half).
   breaching groups tokens by a sentence-level signal too.
3. **Attention off in the other imprinted blocks** (their output projection zeroed): the hidden state of
   each position passes them unchanged, except for the sink.
4. **Imprint (binned) feed-forward layers.** In each of the first ``blocks`` blocks, ``num_bins`` units of
   the MLP measure one random direction ``w`` of the normalised hidden state (its token and position parts), ``s (w . z - c_j)``, with
   ramped cuts ``c_j`` (quantiles of the measurement over random tokens and positions) and a large scale
   ``s`` so GPT-2's GELU acts as a step; every unit writes only the sink dimension, with the same small
   weight, so every unit passes each token the same gradient back. Unit ``j`` then fires for the tokens
   measuring above ``c_j``, and ``(dW_j - dW_{j+1}) / (db_j - db_{j+1})`` is the normalised hidden state
   of the token alone in bin ``j`` (:class:`leakage.attacks.decepticons.DecepticonAttack` matches it to
   a token, a position and a group). The blocks after them are left as they were: their attention is
   what carries every position's gradient to the classifier, read at the last token.

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
#: the group code's size, in units of a token embedding's
GROUP_SIZE = 0.5
#: the query of block 0's copy head: the score of position 0 over the others, times the flag's normalised value
QUERY = 100.0


def _int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _gpt2(model: nn.Module):
    """The ``transformers`` GPT2Model inside ``model``, or a one-line ValueError."""
    from transformers import GPT2Model

    found = [m for m in model.modules() if isinstance(m, GPT2Model)]
    if not found:
        raise ValueError(f"the Decepticons server rewrites a GPT-2 classifier (gpt2_tiny, gpt2_small or a model holding a "
                         f"transformers GPT2Model), got {type(model).__name__}")
    return found[0]


class DecepticonServer(Server):
    """Decepticons' malicious server for a GPT-2 text classifier (see the module docstring): embeddings in
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
        base = _gpt2(sent)
        cfg = base.config
        d, L = cfg.n_embd, cfg.n_layer
        width = base.h[0].mlp.c_fc.weight.shape[1]
        R = self.directions
        K = width // R if self.num_bins is None else self.num_bins
        if K * R > width or K < 2:
            raise ValueError(f"{R} directions of {K} bins do not fit the MLP's width {width}: use num_bins <= "
                             f"{width // R} or fewer directions")
        if self.blocks >= L:
            raise ValueError(f"blocks {self.blocks} leaves no block of the model's {L} unchanged: use at most {L - 1}")
        if n > base.wpe.weight.shape[0]:
            raise ValueError(f"sequences of {n} tokens exceed the model's {base.wpe.weight.shape[0]} positions")
        gen = torch.Generator().manual_seed(self.seed)
        parts = self.parts(d)
        tok, pos, grp = parts["token"], parts["position"], parts["group"]
        sink, flag = int(parts["sink"]), parts["flag"].tolist()
        if cfg.n_head < 2:
            raise ValueError("the Decepticons server needs a GPT-2 with at least 2 attention heads (block 0 copies the "
                             "first two tokens, one head each)")
        with torch.no_grad():
            wte = base.wte.weight
            token_part = wte[:, : len(tok)].clone()
            token_part -= token_part.mean(dim=1, keepdim=True)
            wte.zero_()
            wte[:, tok] = token_part.to(wte)
            scale = float(token_part.norm(dim=1).mean())
            codes = torch.randn(n, len(pos), generator=gen)
            codes -= codes.mean(dim=1, keepdim=True)
            codes *= scale / codes.norm(dim=1, keepdim=True)
            wpe = base.wpe.weight
            wpe.zero_()
            wpe[:n, pos] = codes.to(wpe)
            # block 0: head k (k = 0, 1) copies a projection of token k's token part into half k of the group part
            attn = base.h[0].attn
            dh = d // cfg.n_head
            g = min(dh, len(grp) // 2)
            for p in (attn.c_attn.weight, attn.c_attn.bias, attn.c_proj.weight, attn.c_proj.bias):
                p.zero_()
            block0 = base.h[0]
            block0.ln_1.weight.fill_(1.0), block0.ln_1.bias.zero_()
            for k in range(2):
                if k < n:
                    wpe[k, flag[k]] = FLAG
                attn.c_attn.bias[k * dh] = QUERY * math.sqrt(dh)  # head k's query
                attn.c_attn.weight[flag[k], d + k * dh] = 1.0  # its key reads flag k
                project = torch.randn(len(tok), g, generator=gen) / math.sqrt(len(tok))
                attn.c_attn.weight[tok[:, None], 2 * d + k * dh + torch.arange(g)[None, :]] = project.to(wte)
                attn.c_proj.weight[k * dh + torch.arange(g), grp[k * g:(k + 1) * g]] = 1.0
            # the group code at GROUP_SIZE of a token's size: it marks the sequence, the measurement leaves it out
            sample = base.wte(torch.randint(0, wte.shape[0], (2000, 1), generator=gen).to(wte.device)) + wpe[0]
            copied = attn(block0.ln_1(sample))[0][:, 0, grp]
            attn.c_proj.weight.mul_(GROUP_SIZE * scale / float(copied.norm(dim=1).mean()))
            # the imprinted blocks
            layers, directions, cuts = [], [], []
            sample = self._sample(base, n, gen)
            for i in range(self.blocks):
                block = base.h[i]
                if i > 0:
                    block.attn.c_proj.weight.zero_(), block.attn.c_proj.bias.zero_()
                block.ln_2.weight.fill_(1.0), block.ln_2.bias.zero_()
                fc, proj = block.mlp.c_fc, block.mlp.c_proj
                proj.weight.zero_(), proj.bias.zero_()
                prefix = self._prefix(sent, block.mlp.c_fc)
                for r in range(R):
                    w = torch.zeros(d)
                    measured = torch.cat([tok, pos])
                    w[measured] = torch.randn(len(measured), generator=gen)
                    w[measured] -= w[measured].mean()
                    w /= w.norm()
                    c = self._cuts(sample, w, K)
                    units = slice(r * K, (r + 1) * K)
                    fc.weight[:, units] = (MEASURE_SCALE * w)[:, None].to(fc.weight)
                    fc.bias[units] = (-MEASURE_SCALE * c).to(fc.bias)
                    proj.weight[units, sink] = SINK / (R * K * MEASURE_SCALE)
                    layers.append((prefix, r * K))
                    directions.append(w)
                    cuts.append(c)
        self._layout = {"token": tok, "position": pos, "group": grp[: 2 * g], "sink": sink, "flag": flag,
                        "embedding": token_part.float(), "codes": codes.float(), "layers": layers, "bins": K,
                        "directions": directions, "cuts": cuts, "seq_len": n}
        self.model = sent
        return sent

    @staticmethod
    def _prefix(model: nn.Module, layer: nn.Module) -> str:
        return next(name for name, m in model.named_modules() if m is layer)

    @staticmethod
    def _sample(base: nn.Module, n: int, gen: torch.Generator, samples: int = 20000) -> Tensor:
        """Normalised hidden states ``[samples, d]`` of random tokens at random positions after random first
        tokens, as block 0's MLP sees them: the server's public estimate of what its imprints measure."""
        V = base.wte.weight.shape[0]
        ids = torch.randint(0, V, (samples, 2), generator=gen).to(base.wte.weight.device)
        where = torch.randint(1, max(n, 2), (samples,), generator=gen).clamp_max(n - 1 if n > 1 else 0)
        with torch.no_grad():
            h = base.wte(ids)  # a first token at position 0, then the measured one at `where`
            h[:, 0] += base.wpe.weight[0]
            h[:, 1] += base.wpe.weight[where.to(h.device)]
            h = h + base.h[0].attn(base.h[0].ln_1(h))[0]
            return torch.nn.functional.layer_norm(h[:, 1].float(), h.shape[-1:]).cpu()

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
