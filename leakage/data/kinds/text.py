"""Text: a sample is a sequence of ``seq_len`` token ids ``[n]`` (padded with the tokenizer's pad token,
which is also its attention mask: a position holding the pad token is padding), ``[P, B, n]`` in the
shape convention; the model input a client feeds is the ids (as floats holding integers).

The dummy is a relaxation: continuous input embeddings ``[B, n, d]`` that the model takes in place of
looked-up tokens (:class:`leakage.engine.textmodels.TextClassifier`). They fill all ``n`` positions:
the attack assumes every sequence is ``seq_len`` tokens long, so a padded sequence's pad positions are
reconstructed (and scored) as tokens. A reconstruction is decoded to tokens by the nearest row of the
model's token embedding in cosine similarity (the kind is bound to the model's embedding when the
data meets the model: :meth:`TextKind.bind`). Sequences are matched to the truth by the Hungarian
algorithm on the number of positions whose tokens differ, and scored by ROUGE-1 F (``rouge-score`` on
the decoded text: lower-cased words; the headline score), ROUGE-2 and ROUGE-L F, token accuracy (the
share of the true sequence's real positions recovered at their place) and exact sequences (every real
position right), and the token set's precision and recall (the distinct tokens recovered anywhere in
the batch against the distinct true tokens: how a bag of tokens whose positions are unknown is scored).

With ``relax`` (:class:`TokenSetText`) the dummy is instead a softmax over a candidate token set per
problem (the update's token set, which the attack reads: :mod:`leakage.attacks.tokenset`), and the
positions past a known length hold the pad token.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Optional

import torch
from torch import Tensor

from leakage.data.kinds.base import DataKind, hungarian
from leakage.data.tokenizer import TextTokenizer


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)


def rouge(reference: str, candidate: str) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F of ``candidate`` against ``reference`` (``rouge-score``)."""
    scores = _scorer().score(reference, candidate)
    return {k: float(v.fmeasure) for k, v in scores.items()}


class TextKind(DataKind):
    """Token sequences of ``seq_len`` ids, scored by ROUGE on decoded text; the dummy is input embeddings.

    Args:
        seq_len: tokens per sequence (every sequence truncated or padded to it).
        tokenizer: what encodes and decodes the text (:class:`leakage.data.tokenizer.TextTokenizer`).
        embedding: the model's token embedding ``[vocab, d]`` (set by :meth:`bind`; needed to make and
            decode dummies, not to score token ids).
    """

    name = "text"
    records = "sentences"
    score_label = "ROUGE-1"
    score_name = "rouge1"
    success_unit = "victims"
    summary_metrics = (("rouge1", "ROUGE-1", ".3f"), ("rouge2", "ROUGE-2", ".3f"), ("rougeL", "ROUGE-L", ".3f"),
                       ("token_accuracy", "token accuracy", ".3f"), ("exact_sequences", "exact sequences", ".3f"),
                       ("token_precision", "token-set precision", ".3f"), ("token_recall", "token-set recall", ".3f"))
    headline_metrics = ("rouge1", "rouge2", "token_accuracy")
    columns = ("rouge1", "rouge2", "rougeL", "token_accuracy", "exact_sequences", "token_precision", "token_recall")

    def __init__(self, seq_len: int, tokenizer: TextTokenizer, embedding: Optional[Tensor] = None) -> None:
        super().__init__((seq_len,))
        self.seq_len = int(seq_len)
        self.tokenizer = tokenizer
        self.pad_token_id = tokenizer.pad_token_id
        self.embedding = None if embedding is None else embedding.detach()

    def bind(self, model: torch.nn.Module) -> "TextKind":
        """This kind with ``model``'s token embedding (``get_input_embeddings``, or ``embedding``)."""
        layer = getattr(model, "embedding", None)
        if layer is None and hasattr(model, "get_input_embeddings"):
            layer = model.get_input_embeddings()
        if not isinstance(layer, torch.nn.Embedding):
            raise ValueError(f"text data needs a model with a token embedding (a transformers model, or "
                             f"leakage.engine.textmodels.TextClassifier); {type(model).__name__} has none")
        if layer.num_embeddings < self.tokenizer.vocab_size:
            raise ValueError(f"the model's token embedding has {layer.num_embeddings} rows, the tokenizer "
                             f"{self.tokenizer.name} {self.tokenizer.vocab_size} tokens: give a model for that tokenizer")
        return TextKind(self.seq_len, self.tokenizer, layer.weight)

    def _embedding(self) -> Tensor:
        if self.embedding is None:
            raise ValueError("the text kind has no token embedding yet: bind it to the model (TextKind.bind)")
        return self.embedding

    # ------------------------------------------------------------ the dummy
    def initial(self, batch_size: int, init: str, generator: torch.Generator) -> Tensor:
        """Input embeddings ``[B, n, d]``: Gaussian with the embedding's own scale (``randn``, the
        default), uniform in its range (``uniform``), or zeros."""
        emb = self._embedding()
        shape = (batch_size, self.seq_len, emb.shape[1])
        scale = float(emb.float().std())
        if init == "uniform":
            return scale * (2 * torch.rand(shape, generator=generator) - 1)
        if init == "randn":
            return scale * torch.randn(shape, generator=generator)
        return torch.zeros(shape)

    def decode(self, x: Tensor) -> Tensor:
        """Token ids ``[..., n]`` of model inputs: ids as they are (rounded), input embeddings
        ``[..., n, d]`` by the nearest token embedding in cosine similarity."""
        if self._holds_ids(x):
            return x.detach().round().long().cpu()
        emb = torch.nn.functional.normalize(self._embedding().detach().float().cpu(), dim=-1)
        flat = torch.nn.functional.normalize(x.detach().float().cpu().reshape(-1, x.shape[-1]), dim=-1)
        ids = torch.cat([(chunk @ emb.t()).argmax(-1) for chunk in flat.split(256)])
        return ids.view(x.shape[:-1])

    def _holds_ids(self, x: Tensor) -> bool:
        """Whether ``x`` holds token ids ``[..., n]`` rather than embeddings ``[..., n, d]`` (by shape;
        where both fit, ids are whole numbers)."""
        if x.shape[-1] != self.seq_len:
            return False
        d = None if self.embedding is None else self.embedding.shape[1]
        if x.dim() < 2 or d != self.seq_len or x.shape[-2] != self.seq_len:
            return True
        return bool((x == x.round()).all())

    def embed(self, ids: Tensor) -> Tensor:
        """The token embeddings of ids ``[..., n]``: ``[..., n, d]``."""
        return self._embedding().detach().cpu()[ids.long()]

    def texts(self, ids: Tensor) -> list[str]:
        """Decoded text of each sequence of ids ``[N, n]`` (padding left out)."""
        return [self.tokenizer.decode(row.tolist()) for row in ids]

    def relaxed(self, relax: bool) -> "TextKind":
        """This text with the token-set relaxation (:class:`TokenSetText`: a softmax over each update's
        token set, which an attack reading the token set fills in) or with free input embeddings."""
        if not relax:
            return self if type(self) is TextKind else TextKind(self.seq_len, self.tokenizer, self.embedding)
        return TokenSetText(self.seq_len, self.tokenizer, self.embedding)

    can_harden = True

    def harden_(self, dummy: Tensor) -> Tensor:
        """Every position of the embedding dummies ``[..., B, n, d]`` set to its nearest token's
        embedding (the decoded tokens, fixed); returns the mask of the entries still free (none)."""
        dummy.copy_(self.embed(self.decode(dummy)).to(dummy))
        return torch.zeros_like(dummy)

    # ------------------------------------------------------ pooling restarts
    def combine(self, aligned: Tensor) -> tuple[Tensor, Tensor]:
        """Each position's most frequent token over the aligned restarts (``[R, B, n, d]`` embeddings or
        ``[R, B, n]`` ids), in the restarts' own form; the entropy of the votes per position ``[B, n]``
        (over log R: 0 all agree, 1 all differ; 0 with one restart)."""
        ids = self.decode(aligned)  # [R, B, n]
        R = ids.shape[0]
        mode = ids.mode(0).values
        counts = (ids == ids[:, None]).sum(1).float() / R  # [R, B, n]: each vote's share
        ent = -(counts.log() / R).sum(0) / math.log(R) if R > 1 else torch.zeros(mode.shape)
        pooled = mode.to(aligned) if self._holds_ids(aligned) else self.embed(mode).to(aligned)
        return pooled, ent

    def match_cost(self, reference: Tensor, other: Tensor) -> Tensor:
        """The number of positions at which two sequences' tokens differ ``[B, B]``."""
        a, b = self.decode(reference), self.decode(other)
        return (a[:, None, :] != b[None, :, :]).sum(-1).double()

    # ------------------------------------------------- results and reports
    def evaluate(self, recon: Tensor, truth: Tensor, entropy: Optional[Tensor] = None) -> dict[str, Any]:
        """ROUGE-1/2/L F, token accuracy and exact sequences ``[V]`` (means over the batch), per
        sequence in the truth's order as ``sequence_<metric>`` ``[V, B]``, ``correct`` ``[V, B, n]``
        (the reconstruction's token right at a real position of the truth), ``recovered`` ``[V, B, n]``
        token ids in the truth's order, ``perm`` ``[V, B]`` and ``score`` (ROUGE-1)."""
        rec_ids = self.decode(recon)
        true_ids = truth.detach().round().long().cpu()
        V, B, n = true_ids.shape
        real = true_ids != self.pad_token_id
        keys = ("rouge1", "rouge2", "rougeL", "token_accuracy", "exact_sequences")
        per = {k: torch.zeros(V, B) for k in keys}
        precision, recall = torch.zeros(V), torch.zeros(V)
        perms, correct, recovered = [], [], []
        for v in range(V):
            got = set(rec_ids[v][rec_ids[v] != self.pad_token_id].tolist())
            true = set(true_ids[v][real[v]].tolist())
            precision[v] = len(got & true) / len(got) if got else 0.0
            recall[v] = len(got & true) / len(true) if true else 1.0
            cost = ((rec_ids[v][:, None, :] != true_ids[v][None, :, :]) & real[v][None]).sum(-1)
            perm = hungarian(cost)
            perms.append(perm)
            rec_v = rec_ids[v][perm]
            recovered.append(rec_v)
            right = (rec_v == true_ids[v]) & real[v]
            correct.append(right)
            for i in range(B):
                scores = rouge(self.tokenizer.decode(true_ids[v, i].tolist()), self.tokenizer.decode(rec_v[i].tolist()))
                for k in ("rouge1", "rouge2", "rougeL"):
                    per[k][v, i] = scores[k]
                count = int(real[v, i].sum())
                per["token_accuracy"][v, i] = float(right[i].sum()) / count if count else 1.0
                per["exact_sequences"][v, i] = float(bool((right[i] == real[v, i]).all()))
        out: dict[str, Any] = {k: per[k].mean(1) for k in keys}
        out.update({f"sequence_{k}": per[k] for k in keys})
        out.update(token_precision=precision, token_recall=recall, correct=torch.stack(correct), recovered=torch.stack(recovered), perm=torch.stack(perms),
                   score=out["rouge1"])
        return out

    def scalar_names(self) -> tuple[str, ...]:
        return ("rouge1", "rouge2", "rougeL", "token_accuracy", "exact_sequences", "token_precision", "token_recall")

    def check_truth(self, truth: Tensor) -> None:
        """True sequences must be token ids ``[V, B, seq_len]`` of the tokenizer's vocabulary."""
        if truth.shape[-1] != self.seq_len:
            raise ValueError(f"the true sequences have {truth.shape[-1]} tokens, the text kind {self.seq_len}: "
                             "encode them with the same seq_len")
        ids = truth.double()
        if not bool((ids == ids.round()).all()) or float(ids.min()) < 0 or float(ids.max()) >= self.tokenizer.vocab_size:
            raise ValueError(f"the true sequences must be token ids in [0, {self.tokenizer.vocab_size}) "
                             f"of the tokenizer {self.tokenizer.name}")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "seq_len": self.seq_len, "tokenizer": self.tokenizer.name,
                "pad_token_id": self.pad_token_id}


class TokenSetText(TextKind):
    """Text whose dummy is a softmax over a candidate token set per problem: logits ``[B, n, K]``, the
    model input ``softmax(logits) @ E[candidates]``; positions at or past the problem's length (or each
    sequence's own, an attack's search at B > 1) hold the
    pad token's embedding exactly (padding, to the model). The candidates and lengths are public facts
    of each update that an attack reads (:func:`leakage.attacks.tokenset.token_sets`) and gives with
    :meth:`with_token_sets`.
    """

    #: a fixed position's logits: its token this, the others 0 (softmax one-hot to float32 rounding)
    HARD_LOGIT = 30.0

    def __init__(self, seq_len: int, tokenizer: TextTokenizer, embedding: Optional[Tensor] = None,
                 candidates: Optional[Tensor] = None, lengths: Optional[Tensor] = None) -> None:
        super().__init__(seq_len, tokenizer, embedding)
        self.candidates, self.lengths = candidates, lengths

    def with_token_sets(self, candidates: Tensor, lengths: Tensor) -> "TokenSetText":
        """This kind with every problem's candidate tokens ``[P, K]`` (-1: none) and length ``[P]`` (or each
        sequence's, ``[P, B]``)."""
        if candidates.shape[1] == 0 or bool((candidates.max(1).values < 0).any()):
            raise ValueError("an update's token set is empty (no row of the token embedding's gradient is non-zero): "
                             "the token-set relaxation has nothing to choose from; use dummies.relax false")
        return TokenSetText(self.seq_len, self.tokenizer, self.embedding, candidates.long(), lengths.long())

    def select(self, problems) -> "TokenSetText":
        return TokenSetText(self.seq_len, self.tokenizer, self.embedding, self.candidates[problems], self.lengths[problems])

    def _sets(self) -> tuple[Tensor, Tensor]:
        if self.candidates is None:
            raise ValueError("the token-set relaxation (dummies.relax true on text) needs each update's token set: "
                             "run it with the tag attack, which reads them")
        return self.candidates, self.lengths

    def initial(self, batch_size: int, init: str, generator: torch.Generator) -> Tensor:
        """Logits ``[B, n, K]`` over the largest candidate set (``randn``, ``uniform`` on [-1, 1], or zeros)."""
        K = self._sets()[0].shape[1]
        shape = (batch_size, self.seq_len, K)
        if init == "randn":
            return torch.randn(shape, generator=generator)
        if init == "uniform":
            return 2 * torch.rand(shape, generator=generator) - 1
        return torch.zeros(shape)

    def to_input(self, dummy: Tensor) -> Tensor:
        candidates, lengths = self._sets()
        candidates, lengths = candidates.to(dummy.device), lengths.to(dummy.device)
        emb = self._embedding().to(dummy)
        valid = candidates >= 0  # [P, K]
        weights = dummy.masked_fill(~valid[:, None, None, :], float("-inf")).softmax(-1)
        x = torch.einsum("pbnk,pkd->pbnd", weights, emb[candidates.clamp_min(0)])
        per_sequence = lengths if lengths.dim() == 2 else lengths[:, None]  # [P, B] or [P, 1]
        real = torch.arange(self.seq_len, device=dummy.device) < per_sequence[..., None]  # [P, B or 1, n]
        return torch.where(real[..., None], x, emb[self.pad_token_id])

    def tokens(self, dummy: Tensor) -> Tensor:
        """The candidate each position of the logits ``[P, B, n, K]`` puts first (an index into the candidates)."""
        valid = self._sets()[0].to(dummy.device) >= 0
        return dummy.masked_fill(~valid[:, None, None, :], float("-inf")).argmax(-1)

    def hard(self, choice: Tensor) -> Tensor:
        """Logits ``[..., K]`` that put the candidates ``choice`` ``[...]`` first, one-hot to float32 rounding."""
        K = self._sets()[0].shape[1]
        return torch.nn.functional.one_hot(choice, K).float() * self.HARD_LOGIT

    def harden_(self, dummy: Tensor) -> Tensor:
        """Every position fixed to its first candidate (:meth:`hard`); returns the free mask (none)."""
        dummy.copy_(self.hard(self.tokens(dummy)).to(dummy))
        return torch.zeros_like(dummy)
