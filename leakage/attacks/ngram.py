"""A bigram language model smoothed toward its unigram model: LAMP's prior when no pretrained language model is
at hand (offline, nothing downloaded). It is fitted on public text that is not the victims': by
default the bundled fortunes 500-999 (the default victims are the first sentences, 0 onward), or a
text file of the user's (``.txt``, one sequence per line), tokenized by the attack's tokenizer."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

#: the bundled fortunes held out from the default victims (a victim index is a line of the file)
HELD_OUT = range(500, 1000)


def prior_lines(path: Optional[str]) -> list[str]:
    """The prior's text: the lines of ``path`` (empty lines left out), or the bundled fortunes 500-999."""
    if path is None:
        text = (resources.files("leakage") / "assets" / "text" / "fortunes_0_999.txt").read_text(encoding="utf-8")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return [lines[i] for i in HELD_OUT]
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"prior_text {path!r} does not exist: give a text file (one sequence per line), or leave "
                         "it unset for the bundled fortunes 500-999")
    try:
        lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError as err:
        raise ValueError(f"prior_text {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not lines:
        raise ValueError(f"prior_text {path} holds no text: give a file with one sequence per line")
    return lines


class BigramPrior:
    """A bigram model of token ids, its counts smoothed toward the add-one unigram model
    ``U(w) = (c(w) + 1) / (N + V)``: ``P(w | v) = (c(v, w) + k U(w)) / (c(v) + k)`` (``v`` the previous
    token, a start symbol before the first; add-k smoothing with the unigram as its base, so a pair never
    seen still prefers frequent tokens), scored as the negative log-likelihood per token (nats), at most ``max_nll``.

    Args:
        sequences: the training text as token-id lists.
        vocab_size: ``V``, the tokenizer's vocabulary size.
        k: the smoothing strength (> 0): how many counts the unigram model weighs in each context.
    """

    def __init__(self, sequences: Sequence[Sequence[int]], vocab_size: int, k: float = 5.0) -> None:
        if not k > 0:
            raise ValueError(f"the bigram prior's smoothing k must be > 0, got {k}")
        self.V, self.k = int(vocab_size), float(k)
        self.start = self.V  # the start symbol, outside the vocabulary
        prev, nxt = [], []
        for seq in sequences:
            ids = [int(t) for t in seq]
            prev += [self.start] + ids[:-1]
            nxt += ids
        if not nxt:
            raise ValueError("the bigram prior needs some text to fit")
        pairs = torch.tensor(prev, dtype=torch.long) * (self.V + 1) + torch.tensor(nxt, dtype=torch.long)
        self.keys, self.pair_counts = pairs.unique(return_counts=True)
        self.context_counts = torch.bincount(torch.tensor(prev, dtype=torch.long), minlength=self.V + 1)
        uni = torch.bincount(torch.tensor(nxt, dtype=torch.long), minlength=self.V + 1)[: self.V].double()
        self.unigram = torch.cat([(uni + 1) / (uni.sum() + self.V), torch.ones(1)])
        # no token's NLL exceeds this: an unseen pair after the most frequent context, the rarest unigram
        self.max_nll = float(-(self.k * self.unigram[: self.V].min() / (self.context_counts.max() + self.k)).log())

    def nll(self, tokens: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """Mean negative log-likelihood per token of each sequence of ``tokens`` ``[..., n]`` over its first
        ``lengths`` ``[...]`` positions (all ``n`` when None); shape ``[...]``."""
        tokens = tokens.long().cpu()
        n = tokens.shape[-1]
        prev = torch.cat([torch.full_like(tokens[..., :1], self.start), tokens[..., :-1]], -1)
        pairs = prev * (self.V + 1) + tokens
        pos = torch.searchsorted(self.keys, pairs).clamp_max(self.keys.numel() - 1)
        counts = torch.where(self.keys[pos] == pairs, self.pair_counts[pos], torch.zeros_like(pos)).double()
        base = self.unigram[tokens.clamp(0, self.V)]
        logp = (counts + self.k * base).log() - (self.context_counts[prev].double() + self.k).log()
        if lengths is None:
            return -logp.mean(-1)
        mask = torch.arange(n) < lengths.cpu()[..., None]
        return -(logp * mask).sum(-1) / mask.sum(-1).clamp_min(1)
