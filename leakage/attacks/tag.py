"""TAG on text (Deng et al., 2021): gradient matching with TAG's distance (L2 + 0.1 x L1) on the text
kind's relaxation, seeded and constrained by what the update gives away in closed form, as LAMP and
breaching do.

What the attack reads from the update before it searches (:mod:`leakage.attacks.tokenset`):

- each update's **token set**, the non-zero rows of the token embedding's gradient (when more rows are
  non-zero than the batch has positions, a defended update, the ``B x n`` rows of largest norm);
- each update's **length**, the non-zero rows of the position embedding's gradient: positions past it
  hold the pad token exactly (padding, to the model), and are never searched. In a batch (B > 1) it
  is the longest sequence's length; each sequence's own is searched (stage two).

Stage one (at most ``max_steps - refine_steps`` steps) is TAG's continuous search. With
``dummies.relax`` (the default here) the dummy is a softmax over the update's token set at every
position (:class:`leakage.data.kinds.text.TokenSetText`); without it, free input embeddings (TAG's
own relaxation), decoded to the nearest token embedding. With ``dummies.relax``, stage one ends
early once no problem's most likely tokens have changed for :attr:`TAG.SETTLE_STEPS` steps. Stage
two (at most ``budget.refine_steps`` steps, with ``dummies.relax``) is a discrete search in LAMP's
spirit: every token is fixed to its most likely candidate, and each step evaluates, per problem,
every swap of two positions (at B > 1 also across sequences), every replacement of one position by
another candidate of the token set and, at B > 1, every cut of a sequence (the positions past it
padding) and every one-token extension, the longest kept at the update's length; it keeps the best
when it lowers the distance. When none does, labels fixed before the attack are tried against the
other classes (a last layer without bias leaves two classes ambiguous to iDLG), and a problem whose
step finds nothing better is settled. The sequences a step evaluates go through the model at once
(``vmap``), and only the matched parameters are differentiated (:meth:`TAG.problem_gradients`).
The reported sequence is the lowest-distance one (stage two moves only downhill); a distance of 0
means its update equals the observed one, which the report's residuals show (a token sequence is
not proven unique by it).
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from leakage.attacks.settings import lazy_instance  # jsonargparse's, without its stack walk
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from leakage.attacks.gradient_inversion import GradientInversion
from leakage.attacks.matching import SERIAL_PARAMETERS
from leakage.attacks.settings import Adam, Budget, Dummies, Objective, Optimizer
from leakage.engine.losses import gradient_distance
from leakage.federated.fedavg import per_problem_updates
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
        self._stable = 0  # steps of stage one over which no problem's most likely tokens changed
        self._last_tokens: Optional[Tensor] = None
        self._discrete_steps = 0
        self._longest: Optional[Tensor] = None  # [P]: each update's longest sequence (the position embedding's)
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

    def problems_at_once(self, device: Optional[torch.device] = None) -> Optional[int]:
        """As for any optimisation attack, but the model's size counts only the matched parameters: the
        token embedding (50,257 rows on GPT-2) is never differentiated (:meth:`problem_gradients`), so a
        small text model evaluates all its problems, and the discrete search all its candidates, at once."""
        chunk = self.objective.problems_per_chunk
        device = self.device if device is None else torch.device(device)
        matched = set(self.param_names)
        size = sum(p.numel() for n, p in self.target.named_parameters() if n in matched)
        if chunk is None and device.type == "cpu" and self.objective.compile != "on" and size >= SERIAL_PARAMETERS:
            return 1
        return chunk

    def problem_gradients(self, x: Tensor, targets: Tensor, net: nn.Module) -> dict[str, Tensor]:
        """The update of the matched parameters alone ``{name: [N, *shape]}``, the others (the token
        embedding, which the dummy bypasses: its update is 0) held as constants: one problem through
        ``torch.autograd.grad``, several under ``vmap(grad)`` (4 problems of ``gpt2_tiny``, one CPU thread:
        25 ms a step against 57 ms one at a time; 84 candidates of the discrete search: 50 ms against
        590 ms)."""
        matched = set(self.param_names)
        fixed = {k: v.detach() for k, v in self.target.named_parameters() if k not in matched}
        fixed.update({k: v.detach() for k, v in net.named_buffers()})
        free = {k: v.detach() for k, v in self.target.named_parameters() if k in matched}

        def loss(p: dict[str, Tensor], xb: Tensor, tb: Tensor) -> Tensor:
            return F.cross_entropy(functional_call(net, (p, fixed), (xb,)), tb)

        if x.shape[0] > 1:
            return vmap(grad(loss), in_dims=(None, 0, 0), randomness="different")(free, x, targets)
        graph = torch.is_grad_enabled()
        leaves = {k: v.requires_grad_() for k, v in free.items()}
        with torch.enable_grad():
            grads = torch.autograd.grad(loss(leaves, x[0], targets[0]), list(leaves.values()), create_graph=graph,
                                        allow_unused=True)
        return {k: (torch.zeros_like(p) if g is None else g).unsqueeze(0) for (k, p), g in zip(leaves.items(), grads)}

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
        self._stable, self._last_tokens, self._discrete_steps = 0, None, 0
        return torch.stack(xs), torch.stack(logits)

    # ---------------------------------------------------------- stage two
    def start_refining(self) -> None:
        covered = self.cover_token_sets()  # from the relaxation's best logits, before they are hardened
        super().start_refining()
        with torch.no_grad():
            self.dummy_data.copy_(covered.to(self.dummy_data))
        self.own_lengths()

    def own_lengths(self) -> None:
        """From here on each sequence has its own length, searched at B > 1 (the longest at first); the
        longest stays at what the position embedding's gradient proves."""
        kind = self.kind
        if kind.lengths is None:  # a process with an empty shard: no problem, no token set
            return
        self._longest = kind.lengths.clone()
        B = self.dummy_data.shape[1]
        self.kind = kind.with_token_sets(kind.candidates, kind.lengths[:, None].repeat(1, B))

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

    #: stage one ends early once no problem's most likely tokens have changed for this many steps (the
    #: discrete search starts from them, and takes at most ``budget.refine_steps`` steps)
    SETTLE_STEPS = 10

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if self._free is None and self.budget.refine_steps and self.dummies.relax:
            settled = self._stable >= self.SETTLE_STEPS or not self.num_problems
            if self._trainer is not None:  # several processes: every one switches at the same step, or none
                settled = self.trainer.strategy.reduce_boolean_decision(settled, all=True)
            if settled:
                self.start_refining()
        super().on_train_batch_start(batch, batch_idx)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self._free is None and self.dummies.relax and self.num_problems:
            with torch.no_grad():
                tokens = self.kind.tokens(self.dummy_data)
            same = self._last_tokens is not None and bool((tokens == self._last_tokens).all())
            self._stable, self._last_tokens = (self._stable + 1 if same else 0), tokens
        super().on_train_batch_end(outputs, batch, batch_idx)

    @property
    def done_check_interval(self) -> int:
        """Every step in the discrete search (a settled run ends at once), else the base class's."""
        return 1 if self._free is not None and self.budget.check_done_every is None else super().done_check_interval

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        if self._free is not None and self._discrete_steps < self.budget.refine_steps:
            self.discrete_step()
            self._discrete_steps += 1
        return super().training_step(batch, batch_idx)

    def done(self) -> Tensor:
        done = super().done()
        if self._free is not None and self._settled is not None:
            done |= self._settled.to(done.device)
            if self._discrete_steps >= self.budget.refine_steps:  # the discrete search's budget spent
                done |= True
        return done

    def _proposals(self, choice: Tensor, k: int, longest: int) -> Tensor:
        """The sequences ``choice`` ``[B, n]`` (candidate indices, -1 past each sequence's length) first, then
        every one a move away: two positions swapped (different tokens; at B > 1 also across sequences),
        or one position given another of the ``k`` candidates; at B > 1 also a sequence cut short, or made
        one longer by any candidate, the longest kept at ``longest`` (what the position embedding's
        update proves)."""
        out = [choice]
        B = choice.shape[0]
        lengths = [int((choice[b] >= 0).sum()) for b in range(B)]
        for b in range(B):
            length = lengths[b]
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
            if B == 1:
                continue
            for b2 in range(b + 1, B):  # a token of this sequence and one of another exchanged
                for i in range(length):
                    for j in range(lengths[b2]):
                        if choice[b, i] != choice[b2, j]:
                            c = choice.clone()
                            c[b, i], c[b2, j] = choice[b2, j], choice[b, i]
                            out.append(c)
            others = max((lengths[o] for o in range(B) if o != b), default=0)
            for cut in range(1 if others == longest else length, length):  # shorter (positions past: padding)
                c = choice.clone()
                c[b, cut:] = -1
                out.append(c)
            if length < longest:  # one longer
                for t in range(k):
                    c = choice.clone()
                    c[b, length] = t
                    out.append(c)
        return torch.stack(out)

    def _move_losses(self, p: int, moves: Tensor) -> Tensor:
        """The distance of problem ``p``'s update to the update of each of ``moves`` ``[M, B, n]`` (candidate
        indices, -1: padding), its labels as the problem's, in chunks of :meth:`problems_at_once` (or 256)."""
        kind, joint = self.kind, self.hparams.labels == "joint"
        observed = [o[p:p + 1] for o in self.observed()]  # broadcast over the moves, not copied
        norm = self.observed_sq_norm()[p:p + 1] if self.objective.distance == "cosine" else None
        net = self.client_net(self.dummy_data.device)
        client = self.observation.client
        losses = []
        for part in moves.split(self.problems_at_once() or 256):
            M = part.shape[0]
            idx = torch.full((M,), p, dtype=torch.long)
            x = kind.select(idx).with_token_sets(kind.candidates[idx], (part >= 0).sum(-1)).to_input(
                kind.hard(part.clamp_min(0)).to(self.dummy_data))
            targets = self.dummy_labels[idx].softmax(-1) if joint else self.fixed_labels[idx.to(self.fixed_labels.device)]
            if client is not None:  # FedAvg: the client's local steps, as the objective simulates them
                grads = per_problem_updates(self.target, x, targets, client, self.schedule[idx], forward=net)
            else:
                grads = self.problem_gradients(x, targets, net)
            losses.append(gradient_distance([grads[n] for n in self.param_names], observed, self.objective.distance,
                                            norm))
        return torch.cat(losses)

    @torch.no_grad()
    def discrete_step(self) -> None:
        """One step of the discrete search: per problem not settled, the best sequences one move away
        replace the current ones when their :meth:`sequence_score` (the distance; LAMP adds its prior) is lower; otherwise
        the problem is settled."""
        kind, joint = self.kind, self.hparams.labels == "joint"
        if self.num_problems == 0:
            return
        current = self.matching_loss()
        n = kind.seq_len
        real = torch.arange(n) < kind.lengths.cpu()[..., None]  # [P, B, n]
        choice = torch.where(real, kind.tokens(self.dummy_data).cpu(), -1)
        for p in range(self.num_problems):
            if self._settled[p] or self.failed[p] or not torch.isfinite(current[p]):
                continue
            k = int((kind.candidates[p] >= 0).sum())
            moves = self._proposals(choice[p], k, int(self._longest[p]))
            losses = self.sequence_score(p, self._move_losses(p, moves), moves)
            best = int(losses.argmin())
            if best != 0 and bool(losses[best] < losses[0]):
                self.dummy_data[p] = kind.hard(moves[best].clamp_min(0)).to(self.dummy_data)
                kind.lengths[p] = (moves[best] >= 0).sum(-1).to(kind.lengths)
            elif joint or not self._relabel(p, current[p]):
                self._settled[p] = True

    def _reported(self) -> tuple[Tensor, ...]:
        """In the discrete search, the current sequences: the search moves only to a lower score, and
        each sequence's length (at B > 1) belongs to them, not to an earlier iterate."""
        if self._free is not None:
            return tuple(t.detach() for t in self.point())
        return super()._reported()

    def sequence_score(self, p: int, distance: Tensor, choice: Tensor) -> Tensor:
        """The discrete search's score ``[N]`` (lower is better) of problem ``p``'s sequences ``choice``
        ``[N, B, n]`` (candidate indices; -1: padding past a sequence's length) at their distances ``[N]``:
        the distance; LAMP adds its prior."""
        return distance

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
