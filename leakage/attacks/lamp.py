"""LAMP on text (Balunovic et al., NeurIPS 2022): TAG's continuous matching on the token set, then a
discrete search whose moves (swaps of two positions, replacements from the token set) are scored by
the gradient distance plus a language-model prior, and the reported sequence is the one of best score:

    score = distance / distance_of_a_zero_update + prior_weight x NLL

(the NLL: the negative log-likelihood per token of the batch's sequences, nats). The distance is
divided by the problem's own scale, the distance a zero update would have, so ``prior_weight`` means
the same on every model and batch size (its value: how much relative distance one nat per token is
worth). The update stays the evidence: a sequence whose update reproduces the observed one (relative
distance at most :data:`REPRODUCES`, float32 rounding) is preferred to every sequence whose update
does not, whatever the prior says; among those, and among the others, the score decides. A score is
kept in the distance's units (the bracket above times the scale), so the report's losses and the
choice of restarts read it as they read TAG's distance.

The paper's prior is GPT-2's perplexity. No pretrained language model is at hand offline here, so the
prior is a bigram model (:class:`leakage.attacks.ngram.BigramPrior`) fitted on public text that is
not the victims': by default the bundled fortunes 500-999, disjoint from the default victims (the
first sentences: with ``BundledText`` keep ``data.indices`` below 500, or give ``prior_text``), or
the user's own text file, tokenized by the run's tokenizer. The attack reads only the observation and
that public text.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

import torch
from leakage.attacks.settings import lazy_instance  # jsonargparse's, without its stack walk
from torch import Tensor, nn

from leakage.attacks.ngram import BigramPrior, prior_lines
from leakage.attacks.settings import Adam, Budget, Dummies, Objective, Optimizer
from leakage.attacks.tag import TAG
from leakage.engine import checks
from leakage.engine.bestiterate import BestIterate
from leakage.engine.losses import gradient_distance
from leakage.records import Observation

#: a relative distance at or below this is float32 rounding: the sequence's update reproduces the observed one
REPRODUCES = 1e-5


class LampObjective(Objective):
    """LAMP's objective: :class:`~leakage.attacks.settings.Objective`'s gradient distance and settings,
    plus the language-model prior that scores the discrete search's moves.

    Args:
        prior_text: a UTF-8 text file (one sequence per line) the bigram prior is fitted on; None: the
            bundled fortunes 500-999 (disjoint from the default victims, fortunes 0 onward).
        prior_weight: weight of the prior's negative log-likelihood per token (nats) added to the
            relative distance (the distance over that of a zero update) of every sequence the discrete
            search evaluates and of the one reported (0: TAG's search and report).
        (the other arguments: :class:`~leakage.attacks.settings.Objective`)
    """

    def __init__(self, distance: Literal["l2", "cosine", "tag"] = "tag", tv_weight: float = 0.0, bn_weight: float = 0.0,
                 group_weight: float = 0.0, problems_per_chunk: Optional[int] = None,
                 compile: Literal["auto", "on", "off"] = "auto", fixed_shape: Optional[bool] = None,
                 exclude: Optional[list[str]] = None, prior_text: Optional[str] = None,
                 prior_weight: float = 0.01) -> None:
        super().__init__(distance, tv_weight, bn_weight, group_weight, problems_per_chunk, compile, fixed_shape, exclude)
        checks.float32_number("prior_weight", prior_weight)
        if prior_weight < 0:
            raise ValueError(f"prior_weight must be >= 0 (0: no language-model prior), got {prior_weight}")
        if prior_text is not None:
            prior_lines(prior_text)  # a missing or unreadable file: one line now, not after the search
        self.prior_text, self.prior_weight = prior_text, prior_weight


class LAMP(TAG):
    """LAMP on text: TAG's continuous search, then a discrete search, and the reported sequence, scored by
    the relative gradient distance plus ``objective.prior_weight`` x a bigram language model's negative
    log-likelihood per token, fitted on ``objective.prior_text``; a sequence whose update reproduces the
    observed one is preferred to any that does not (see :mod:`leakage.attacks.lamp`). Its settings are
    TAG's, with the objective a :class:`LampObjective`."""

    def __init__(
        self,
        model: Union[nn.Module, str] = "gpt2_tiny",
        input_shape: Sequence[int] = (16,),
        num_classes: int = 2,
        model_seed: int = 1234,
        model_weights: Optional[str] = None,
        objective: LampObjective = lazy_instance(LampObjective, distance="tag"),
        labels: Literal["joint", "idlg", "bias_count", "weight_count", "yin", "ilrg", "known"] = "idlg",
        optimizer: Optimizer = lazy_instance(Adam, lr=0.1),
        dummies: Dummies = lazy_instance(Dummies, relax=True),
        budget: Budget = lazy_instance(Budget, refine_steps=20),
    ) -> None:
        for settings in (objective, budget):
            settings.settings()  # a lazy_instance default sets its attributes at its first method call
        if not isinstance(objective, LampObjective):
            raise ValueError("the lamp attack's objective is a LampObjective (its prior_text and prior_weight): "
                             "give objective.prior_weight, not another objective class")
        if budget.refine_steps <= 0 and objective.prior_weight > 0:
            raise ValueError("the lamp attack's prior scores the discrete search: set budget.refine_steps > 0, "
                             "or use the tag attack")
        super().__init__(model, input_shape, num_classes, model_seed, model_weights, objective, labels, optimizer,
                         dummies, budget)
        self._prior: Optional[BigramPrior] = None
        self._scale: Optional[Tensor] = None
        self.best = ScoredBest(self.reported_score)

    def _attach(self, observation: Observation) -> None:
        self._scale = None
        super()._attach(observation)

    def language_prior(self) -> BigramPrior:
        """The bigram prior, fitted once on ``objective.prior_text`` with the run's tokenizer."""
        if self._prior is None:
            tok = self.kind.tokenizer
            self._prior = BigramPrior([tok.encode(line) for line in prior_lines(self.objective.prior_text)],
                                      tok.vocab_size)
        return self._prior

    @torch.no_grad()
    def distance_scale(self) -> Tensor:
        """Each problem's distance of a zero update ``[P]`` (for ``cosine``, 1): what a relative distance divides by."""
        if self._scale is None or self._scale.shape[0] != self.num_problems:
            observed = [o.detach().double() for o in self.observed()]
            zero = gradient_distance([torch.zeros_like(o) for o in observed], observed, self.objective.distance)
            self._scale = zero.clamp_min(torch.finfo(torch.float64).tiny).float()
        return self._scale

    def sequence_score(self, p: int, distance: Tensor, choice: Tensor) -> Tensor:
        """LAMP's score ``[N]`` of problem ``p``'s sequences ``choice`` ``[N, B, n]`` (candidate indices) at their
        distances ``[N]``, in the distance's units: ``scale x (relative distance + prior_weight x NLL)``, the NLL
        the mean over the batch's sequences of their NLL per token (the real positions). A sequence whose
        relative distance exceeds :data:`REPRODUCES` also pays ``prior_weight x`` the largest NLL the prior can
        give, so one whose update reproduces the observed one scores lower, whatever the prior says."""
        weight = self.objective.prior_weight
        if weight == 0:
            return distance
        kind = self.kind
        ids = kind.candidates[p].cpu()[choice.clamp_min(0)]  # [N, B, n] token ids
        length = (choice >= 0).sum(-1)  # each sequence's own length (the search may cut or extend it at B > 1)
        prior = self.language_prior()
        nll = prior.nll(ids, length).mean(-1).to(distance)
        scale = self.distance_scale()[p].to(distance)
        short = (distance > REPRODUCES * scale).to(distance) * prior.max_nll  # its update does not reproduce the observed
        return distance + weight * scale * (nll + short)

    @torch.no_grad()
    def reported_score(self, loss: Tensor, point: tuple[Tensor, ...]) -> Tensor:
        """The score ``[P]`` the reported iterate is chosen by: the distance in the continuous stage (soft
        tokens have no sequence to score), :meth:`sequence_score` of the hard sequences in the discrete one."""
        if self._free is None or self.objective.prior_weight == 0 or loss.shape[0] == 0:
            return loss
        kind = self.kind
        real = torch.arange(kind.seq_len) < kind.lengths.cpu().reshape(loss.shape[0], -1)[..., None]
        choice = torch.where(real, kind.tokens(point[0]).cpu(), -1)  # [P, B, n], -1 past each length
        return torch.stack([self.sequence_score(p, loss[p:p + 1], choice[p][None])[0] for p in range(loss.shape[0])])


class ScoredBest(BestIterate):
    """A :class:`~leakage.engine.bestiterate.BestIterate` that keeps each problem's point of lowest
    ``score(loss, point)`` ``[P]`` instead of lowest loss (LAMP: the distance plus its prior)."""

    def __init__(self, score) -> None:
        super().__init__()
        self.score = score

    def offer(self, loss: Tensor, point) -> Tensor:
        return super().offer(self.score(loss.detach(), tuple(point)), point)
