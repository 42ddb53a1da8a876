"""TAG on text (Deng et al., 2021): gradient matching with TAG's distance (L2 + 0.1 x L1) on the text
kind's relaxation, seeded and constrained by what the update gives away in closed form, as LAMP and
breaching do.

What the attack reads from the update before it searches (:mod:`leakage.attacks.tokenset`):

- each update's **token set**, the non-zero rows of the token embedding's gradient (when more rows are
  non-zero than the batch has positions, a defended update, the ``B x n`` rows of largest norm);
- each update's **length**, the non-zero rows of the position embedding's gradient: positions past it
  hold the pad token exactly (padding, to the model), and are never searched.

Stage one (``max_steps - refine_steps`` steps) is TAG's continuous search. With ``dummies.relax``
(the default here) the dummy is a softmax over the update's token set at every position
(:class:`leakage.data.kinds.text.TokenSetText`); without it, free input embeddings (TAG's own
relaxation), decoded to the nearest token embedding. Stage two (``budget.refine_steps``, with
``dummies.relax``) is a discrete search in LAMP's spirit: every token is fixed to its most likely
candidate, and each step evaluates, per problem, every swap of two positions of a sequence and
every replacement of one position by another candidate of the token set, and keeps the best when it
lowers the distance; when none does, labels fixed before the attack are tried against the other
classes (a last layer without bias leaves two classes ambiguous to iDLG), and a problem whose step
finds nothing better is settled. The reported sequence
is the best evaluated; a distance of 0 means its update equals the observed one, which the report's
residuals show (a token sequence is not proven unique by it).
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

import torch
from leakage.attacks.settings import lazy_instance  # jsonargparse's, without its stack walk
from torch import Tensor, nn

from leakage.attacks.gradient_inversion import GradientInversion
from leakage.attacks.settings import Adam, Budget, Dummies, Objective, Optimizer
from leakage.attacks.tokenset import embedding_names, sequence_lengths, token_sets
from leakage.engine.seeding import generator
from leakage.records import Observation


class TAG(GradientInversion):
    """TAG on text: gradient matching with TAG's distance on the token-set relaxation, then a discrete
    search over swaps and replacements (see :mod:`leakage.attacks.tag`). Its settings are those of
    :class:`~leakage.attacks.gradient_inversion.GradientInversion`, with text defaults: ``gpt2_tiny``,
    ``objective.distance tag``, Adam (lr 0.1), ``dummies.relax`` true (the token set) and
    ``budget.refine_steps`` 20 (the discrete search's steps)."""

    def __init__(
        self,
        model: Union[nn.Module, str] = "gpt2_tiny",
        input_shape: Sequence[int] = (16,),
        num_classes: int = 2,
        model_seed: int = 1234,
        model_weights: Optional[str] = None,
        objective: Objective = lazy_instance(Objective, distance="tag"),
        labels: Literal["joint", "idlg", "bias_count", "weight_count", "yin", "ilrg", "known"] = "idlg",
        optimizer: Optimizer = lazy_instance(Adam, lr=0.1),
        dummies: Dummies = lazy_instance(Dummies, relax=True),
        budget: Budget = lazy_instance(Budget, refine_steps=20),
    ) -> None:
        for settings in (dummies, budget):
            settings.settings()  # a lazy_instance default sets its attributes at its first method call
        if budget.refine_steps > 0 and not dummies.relax:
            raise ValueError("the tag attack's discrete search (budget.refine_steps) runs on the token-set relaxation: "
                             "set dummies.relax true, or budget.refine_steps 0")
        super().__init__(model, input_shape, num_classes, model_seed, model_weights, objective, labels, optimizer,
                         dummies, budget)
        self._settled: Optional[Tensor] = None
        self._match_without_token_embedding()

    def _match_without_token_embedding(self) -> None:
        """Match every parameter's update but the token embedding's: the dummy (an embedding) bypasses the
        lookup, and that update has given what it holds, the token set; the distances, and the report's
        residuals, then measure what the reconstruction explains (0 when its update equals the observed)."""
        token = embedding_names(self.target)[0]
        self.param_names = [n for n, _ in self.target.named_parameters() if n != token]

    def receive(self, model: nn.Module) -> None:
        super().receive(model)
        self._match_without_token_embedding()

    def check_observation(self, observation: Observation) -> None:
        super().check_observation(observation)
        if observation.kind.name != "text":
            raise ValueError(f"the tag attack reconstructs text; the data is {observation.kind.name}: use a text "
                             "source (--data.source BundledText or TextFile)")

    def initial_dummies(self, observation: Observation) -> tuple[Tensor, Tensor]:
        """Every problem's start (its generator as for any optimisation attack): logits over its token
        set (relaxed), or input embeddings with the positions past the update's length set to padding."""
        hp, B, R = self.hparams, observation.batch_size, self.dummies.restarts
        n = observation.input_shape[0]
        if not observation.update_keys:
            return super().initial_dummies(observation)
        sets = token_sets(observation, self.target)
        pad = observation.kind.pad_token_id
        sets = [s[s != pad] for s in sets]
        norms = observation.gradient_estimate()[embedding_names(self.target)[0]].double().norm(dim=-1)
        # a defended update: more non-zero rows than the batch has positions; the B x n of largest norm
        sets = [s if s.numel() <= B * n else s[norms[v][s].topk(B * n).indices].sort().values
                for v, s in enumerate(sets)]
        lengths = sequence_lengths(observation, self.target, n).repeat_interleave(R)
        K = max(int(s.numel()) for s in sets)
        cand = torch.full((len(sets), K), -1, dtype=torch.long)
        for v, s in enumerate(sets):
            cand[v, : s.numel()] = s
        cand = cand.repeat_interleave(R, dim=0)
        if self.dummies.relax:
            self.kind = self.kind.with_token_sets(cand, lengths)
        kind = self.kind
        xs, logits = [], []
        p = 0
        for key in observation.update_keys:
            for r in range(R):
                gen = generator("dummy", self.dummies.init_seed, key, r)
                x = kind.select(slice(p, p + 1)).initial(B, self.dummies.init, gen) if self.dummies.relax else \
                    kind.initial(B, self.dummies.init, gen)
                if not self.dummies.relax:  # TAG's embeddings: padding past the length, exactly
                    x[:, int(lengths[p]):] = kind.embed(torch.tensor(pad))
                xs.append(x)
                logits.append(torch.randn((B, hp.num_classes), generator=gen))
                p += 1
        self._settled = torch.zeros(p, dtype=torch.bool)
        return torch.stack(xs), torch.stack(logits)

    # ---------------------------------------------------------- stage two
    def start_refining(self) -> None:
        covered = self.cover_token_sets()  # from the relaxation's best logits, before they are hardened
        super().start_refining()
        with torch.no_grad():
            self.dummy_data.copy_(covered.to(self.dummy_data))

    @torch.no_grad()
    def cover_token_sets(self) -> Tensor:
        """Every problem's tokens fixed so that each candidate of its token set stands at least once (the
        set is exactly the batch's tokens): the Hungarian algorithm gives each candidate its own position,
        the most likely under the relaxation's softmax, and the other positions keep their most likely
        candidate (what the argmax alone gives can repeat one token and drop another)."""
        from scipy.optimize import linear_sum_assignment

        kind = self.kind
        probs = self.best.point[0] if not self.best.empty else self.dummy_data
        out = self.dummy_data.detach().clone()
        for p in range(self.num_problems):
            k, length = int((kind.candidates[p] >= 0).sum()), int(kind.lengths[p])
            logp = probs[p][:, :length, :k].float().log_softmax(-1).cpu()  # [B, L, k]
            B = logp.shape[0]
            choice = logp.argmax(-1)
            if k <= B * length:
                rows, cols = linear_sum_assignment(-logp.reshape(B * length, k).double().numpy())
                flat = choice.reshape(-1)
                flat[torch.as_tensor(rows)] = torch.as_tensor(cols)
                choice = flat.view(B, length)
            full = kind.select(slice(p, p + 1)).tokens(probs[p:p + 1].float()).cpu()[0]  # [B, n]
            full[:, :length] = choice
            out[p] = kind.hard(full).to(out)
        return out

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        if self._free is not None:
            self.discrete_step()
        return super().training_step(batch, batch_idx)

    def done(self) -> Tensor:
        done = super().done()
        if self._free is not None and self._settled is not None:
            done |= self._settled.to(done.device)
        return done

    def _proposals(self, choice: Tensor, length: int, k: int) -> Tensor:
        """Every sequence of ``choice`` ``[B, n]`` (candidate indices) one move away: two positions of a
        sequence swapped (different tokens only), or one position given another of the ``k`` candidates."""
        out = []
        B = choice.shape[0]
        for b in range(B):
            for i in range(length):
                for j in range(i + 1, length):
                    if choice[b, i] != choice[b, j]:
                        c = choice.clone()
                        c[b, i], c[b, j] = choice[b, j], choice[b, i]
                        out.append(c)
                for t in range(k):
                    if t != choice[b, i]:
                        c = choice.clone()
                        c[b, i] = t
                        out.append(c)
        return torch.stack(out) if out else choice[None]

    @torch.no_grad()
    def discrete_step(self) -> None:
        """One step of the discrete search: per problem not settled, the best sequence one move away
        replaces the current one when its distance is lower; otherwise the problem is settled."""
        kind, joint = self.kind, self.hparams.labels == "joint"
        current = self.matching_loss()
        choice = kind.tokens(self.dummy_data)  # [P, B, n]
        chunk = self.problems_at_once() or 256
        for p in range(self.num_problems):
            if self._settled[p] or self.failed[p] or not torch.isfinite(current[p]):
                continue
            k = int((kind.candidates[p] >= 0).sum())
            moves = self._proposals(choice[p].cpu(), int(kind.lengths[p]), k)
            proposals = kind.hard(moves).to(self.dummy_data)
            losses = []
            for part in proposals.split(chunk):
                idx = torch.full((part.shape[0],), p, dtype=torch.long, device=part.device)
                labels = self.dummy_labels[idx] if joint else None
                losses.append(self._objective(part, labels, idx))
            losses = torch.cat(losses) + self.sequence_penalty(p, moves).to(current)
            score = current[p] + self.sequence_penalty(p, choice[p][None].cpu())[0].to(current)
            best = int(losses.argmin())
            if bool(losses[best] < score):
                self.dummy_data[p] = proposals[best]
            elif joint or not self._relabel(p, current[p]):
                self._settled[p] = True

    def sequence_penalty(self, p: int, choice: Tensor) -> Tensor:
        """What the discrete search adds to the distance of problem ``p``'s sequences ``choice`` ``[N, B, n]``
        (candidate indices): nothing here; LAMP adds its language-model prior."""
        return torch.zeros(choice.shape[0])

    def _relabel(self, p: int, loss: Tensor) -> bool:
        """Labels fixed before the attack (iDLG, a batch restoration) tried against the others: each slot's
        label changed to each other class, the best kept when it lowers the distance. A last layer without
        bias leaves two classes' labels ambiguous (``dW = (p - y) h^T`` with the sign of ``h`` unknown);
        the whole update is not. Returns whether a label changed."""
        labels = self.fixed_labels[p]
        B, K = labels.shape[0], self.hparams.num_classes
        options = []
        for b in range(B):
            for c in range(K):
                if c != int(labels[b]):
                    y = labels.clone()
                    y[b] = c
                    options.append(y)
        if not options:
            return False
        options = torch.stack(options)
        idx = torch.full((options.shape[0],), p, dtype=torch.long, device=options.device)
        logits = torch.nn.functional.one_hot(options, K).float() * 100.0  # a softmax one-hot to float32 rounding
        x = self.dummy_data[p].expand(options.shape[0], *self.dummy_data.shape[1:])
        losses = self._objective(x, logits.to(x), idx)
        best = int(losses.argmin())
        if bool(losses[best] < loss):
            self.fixed_labels[p] = options[best]
            return True
        return False
