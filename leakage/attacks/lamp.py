"""LAMP on text (Balunovic et al., NeurIPS 2022): TAG's continuous matching on the token set, then a
discrete search whose moves (swaps of two positions, replacements from the token set) are scored by
the gradient distance plus a language-model prior, ``distance + prior_weight x NLL``, the negative
log-likelihood per token of the batch's sequences.

The paper's prior is GPT-2's perplexity. No pretrained language model is at hand offline here, so the
prior is a bigram model (:class:`leakage.attacks.ngram.BigramPrior`) fitted on public text that is
not the victims': by default the bundled fortunes 500-999, disjoint from the default victims (the
first sentences: with ``BundledText`` keep ``data.indices`` below 500, or give ``prior_text``), or
the user's own text file, tokenized by the run's tokenizer. The attack reads only the observation and
that public text.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

from leakage.attacks.settings import lazy_instance  # jsonargparse's, without its stack walk
from torch import Tensor, nn

from leakage.attacks.ngram import BigramPrior, prior_lines
from leakage.attacks.settings import Adam, Budget, Dummies, Objective, Optimizer
from leakage.engine import checks
from leakage.attacks.tag import TAG


class LampObjective(Objective):
    """LAMP's objective: :class:`~leakage.attacks.settings.Objective`'s gradient distance and settings,
    plus the language-model prior that scores the discrete search's moves.

    Args:
        prior_text: a UTF-8 text file (one sequence per line) the bigram prior is fitted on; None: the
            bundled fortunes 500-999 (disjoint from the default victims, fortunes 0 onward).
        prior_weight: weight of the prior's negative log-likelihood per token (nats) added to the
            distance of every sequence the discrete search evaluates (0: TAG's search).
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
    """LAMP on text: TAG's continuous search, then a discrete search scored by the gradient distance plus
    ``objective.prior_weight`` x a bigram language model's negative log-likelihood per token, fitted on
    ``objective.prior_text`` (see :mod:`leakage.attacks.lamp`). Its settings are TAG's, with the
    objective a :class:`LampObjective`."""

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
        objective.settings()  # a lazy_instance default sets its attributes at its first method call
        if not isinstance(objective, LampObjective):
            raise ValueError("the lamp attack's objective is a LampObjective (its prior_text and prior_weight): "
                             "give objective.prior_weight, not another objective class")
        if budget.refine_steps <= 0 and objective.prior_weight > 0:
            raise ValueError("the lamp attack's prior scores the discrete search: set budget.refine_steps > 0, "
                             "or use the tag attack")
        super().__init__(model, input_shape, num_classes, model_seed, model_weights, objective, labels, optimizer,
                         dummies, budget)
        self._prior: Optional[BigramPrior] = None

    def language_prior(self) -> BigramPrior:
        """The bigram prior, fitted once on ``objective.prior_text`` with the run's tokenizer."""
        if self._prior is None:
            tok = self.kind.tokenizer
            self._prior = BigramPrior([tok.encode(line) for line in prior_lines(self.objective.prior_text)],
                                      tok.vocab_size)
        return self._prior

    def sequence_penalty(self, p: int, choice: Tensor) -> Tensor:
        """``prior_weight`` x the mean over the batch's sequences of their NLL per token (the real positions)."""
        weight = self.objective.prior_weight
        if weight == 0:
            return super().sequence_penalty(p, choice)
        kind = self.kind
        ids = kind.candidates[p].cpu()[choice.clamp_min(0)]  # [N, B, n] token ids
        length = kind.lengths[p].cpu().expand(choice.shape[:-1])
        return weight * self.language_prior().nll(ids, length).mean(-1).float()
