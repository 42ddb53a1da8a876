"""The gradient-inversion attack as a LightningModule.

Dummy images and dummy labels are ``nn.Parameter``s with a leading problem dimension
``P = victims x restarts``; ``training_step`` returns the summed gradient-matching loss, so one
optimizer step is one attack iteration for every problem at once and each dummy's gradient stays
its own. The module reads only the observation (model, shared gradient, public metadata).
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

from leakage.attacks.settings import lazy_instance  # jsonargparse's, without its stack walk
import torch
from torch import Tensor, nn

from leakage.engine import checks

from leakage.engine import memory
from leakage.engine.allocator import keep_freed_memory
from leakage.engine.bestiterate import BestIterate
from leakage.federated.client import batchnorm_layers
from leakage.federated.trainable import shared_names
from leakage.records import Observation
from leakage.engine.distributed import all_done
from leakage.attacks.family import Attack
from leakage.attacks.matching import GradientMatching
from leakage.attacks.settings import LBFGS, Budget, Dummies, Objective, Optimizer
from leakage.federated.fedavg import schedules
from leakage.attacks.labels import label_gradients, observed_labels, public_labels
from leakage.engine.optim import BatchedLBFGS
from leakage.engine.precision import full_precision
from leakage.engine.seeding import generator
from leakage.engine.stopping import StoppingRule

LABELS = ("joint", "idlg", "bias_count", "weight_count", "yin", "ilrg", "known")
#: what the attack logs through ``self.log`` (what an EarlyStopping or ModelCheckpoint may monitor)
LOGGED_METRICS = ("attack/loss",)


class GradientInversion(GradientMatching, Attack):
    """Reconstruct client data from shared gradients (DLG, iDLG, Inverting Gradients).

    Args:
        model: target model: a built-in name (``lenet``, DLG's; ``simple_cnn``; ``mlp``;
            ``resnet18``, the CIFAR variant of Inverting Gradients; ``resnet18_imagenet``) or any
            ``torch.nn.Module``, given in a config as ``class_path`` and ``init_args`` (an import
            path of a class, or of a function returning a module) or on the command line as
            ``--model.model my_package.MyNet --model.model.width 64``. The module is owned by the
            attack from then on (its parameters are frozen).
        input_shape: ``[C, H, W]``; linked from the data by the CLI.
        num_classes: linked from the data by the CLI.
        model_seed: seed of a built-in model's weights (a module given by import path is built by
            its own code; seed it with ``seed_everything``).
        model_weights: optional weights file: a state_dict (``.pt``/``.pth``), a Lightning
            checkpoint (``.ckpt``, its ``state_dict``; a prefix such as ``model.`` is stripped when
            only one fits) or ``.safetensors``; read without unpickling.
        objective: the gradient distance, the priors and how the objective is evaluated
            (:class:`leakage.attacks.settings.Objective`).
        labels: ``joint`` (DLG: soft labels optimized with the images), ``idlg`` (analytic, from
            the last layer's gradient; batch size 1), or a batch label restoration fixed before the
            attack: ``bias_count``, ``weight_count``, ``yin``, ``ilrg`` (see :mod:`leakage.attacks.labels`), or
            ``known``: the labels are public (the data's ``public_labels``; TabLeak's setting).
        optimizer: :class:`~leakage.attacks.settings.LBFGS` (batched, as DLG),
            :class:`~leakage.attacks.settings.Adam` or :class:`~leakage.attacks.settings.SignedAdam`,
            each with its own settings.
        dummies: restarts per victim, their start, parametrisation and ensembling
            (:class:`leakage.attacks.settings.Dummies`).
        budget: per-problem stopping and TabLeak's second stage (:class:`leakage.attacks.settings.Budget`).
    """

    #: every flat setting that moved into an object, and its new place (``leakage fit`` refuses the old key)
    MOVED = {
        **{key: f"--model.objective.{key} (in a config: model.objective.{key})"
           for key in ("distance", "tv_weight", "bn_weight", "group_weight", "problems_per_chunk", "compile",
                       "fixed_shape")},
        "lr": "--model.optimizer LBFGS|Adam|SignedAdam --model.optimizer.lr X (in a config: model.optimizer.init_args.lr)",
        "lr_decay": "--model.optimizer Adam --model.optimizer.lr_decay true (in a config: model.optimizer.init_args.lr_decay)",
        **{f"lbfgs_{key}": f"--model.optimizer LBFGS --model.optimizer.{key} N (in a config: model.optimizer.init_args.{key})"
           for key in ("max_iter", "history_size", "tolerance_grad", "tolerance_change", "early_exit")},
        **{key: f"--model.dummies.{key} (in a config: model.dummies.{key})"
           for key in ("restarts", "init", "init_seed", "relax", "box_constraint", "ensemble")},
        **{key: f"--model.budget.{key} (in a config: model.budget.{key})"
           for key in ("stop_loss", "stop_relative", "stop_change", "stall_steps", "stall_improvement", "refine_steps",
                       "check_done_every")},
    }

    def __init__(
        self,
        model: Union[nn.Module, str] = "lenet",
        input_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        model_seed: int = 1234,
        model_weights: Optional[str] = None,
        objective: Objective = lazy_instance(Objective),
        labels: Literal["joint", "idlg", "bias_count", "weight_count", "yin", "ilrg", "known"] = "joint",
        optimizer: Optimizer = lazy_instance(LBFGS),
        dummies: Dummies = lazy_instance(Dummies),
        budget: Budget = lazy_instance(Budget),
    ) -> None:
        super().__init__()
        if labels not in LABELS:
            raise ValueError(f"unknown label strategy {labels!r}; choose one of {', '.join(LABELS)}")
        for name, value, cls in (("objective", objective, Objective), ("optimizer", optimizer, Optimizer),
                                 ("dummies", dummies, Dummies), ("budget", budget, Budget)):
            if not isinstance(value, cls):
                raise ValueError(f"{name} must be a {cls.__module__}.{cls.__name__}, got {type(value).__name__}")
            value.settings()  # a default given as lazy_instance (the CLI's) sets its attributes at its first method call
        if budget.refine_steps > 0 and isinstance(optimizer, LBFGS):
            raise ValueError("budget.refine_steps needs optimizer Adam or SignedAdam (it restarts the optimizer's "
                             "state mid-run, which L-BFGS's per-problem history does not support)")
        if objective.group_weight > 0 and dummies.restarts < 2:
            raise ValueError("group consistency (objective.group_weight > 0) needs dummies.restarts >= 2: it pulls a "
                             "victim's restarts together")
        checks.seed("model_seed", model_seed)
        self.objective, self.optimizer, self.dummies, self.budget = objective, optimizer, dummies, budget
        self.stopping = StoppingRule(budget.stop_loss, budget.stop_change, budget.stall_steps,
                                     budget.stall_improvement, budget.stop_relative)
        # hparams: the run's settings as one flat record (what hparams.yaml, the report and TensorBoard show)
        record = {"model": model, "input_shape": input_shape, "num_classes": num_classes, "model_seed": model_seed,
                  "model_weights": model_weights, "labels": labels, **objective.settings(),
                  "optimizer": optimizer.name, **optimizer.settings(), **dummies.settings(), **budget.settings()}
        self._settings_and_target(model, input_shape, num_classes, model_seed, model_weights, record)
        self._bn_layers = batchnorm_layers(self.target) if objective.bn_weight > 0 else []
        if objective.bn_weight > 0 and not self._bn_layers:
            raise ValueError(f"bn_weight > 0 needs a model with BatchNorm layers that keep running statistics; "
                             f"model {self.hparams.model!r} has none")
        self._client_net: Optional[nn.Module] = None  # the client's forward (train or eval mode), per device
        self.param_names = self.objective.matched(n for n, _ in self.target.named_parameters())
        self.consensus: Optional[Tensor] = None  # group consistency targets [P, B, ...]
        self._evaluating: Optional[Tensor] = None  # problems the optimizer asks to evaluate
        self._compiled = None  # the compiled objective, once built; False after a fallback
        self.best = BestIterate()  # every problem's lowest-loss dummies so far: what the attack reports
        self._free: Optional[Tensor] = None  # refine_steps: the dummy entries still optimized
        self._loss_scale: Optional[Tensor] = None  # [P]: what stop_relative is a fraction of
        self._observed_sq: Optional[Tensor] = None  # [P]: squared norms of the observed gradients (cosine)

    # -------------------------------------------------------------- set-up
    @staticmethod
    def check_budget(settings: dict, max_steps: int) -> None:
        """Refuse a ``budget.refine_steps`` of the config's ``model`` section that leaves no first stage."""
        budget = settings.get("budget") if hasattr(settings, "get") else None
        init_args = budget.get("init_args", budget) if hasattr(budget, "get") else None
        refine = init_args.get("refine_steps") if hasattr(init_args, "get") else None
        if isinstance(refine, int) and not isinstance(refine, bool) and refine >= max_steps:
            Budget(refine_steps=refine).check(max_steps)

    def receive(self, model: nn.Module) -> None:
        super().receive(model)
        self._bn_layers = batchnorm_layers(self.target) if self.objective.bn_weight > 0 else []
        self.param_names = self.objective.matched(n for n, _ in self.target.named_parameters())
        self._client_net = None

    def check_memory(self, victims: int, batch_size: int, local_steps: int = 1, trainer=None) -> None:
        memory.check_attack(self, victims, batch_size, local_steps, trainer)

    def _attach(self, observation: Observation) -> None:
        hp = self.hparams
        self.observation = observation
        self.kind = observation.kind.relaxed(self.dummies.relax)
        unused = [w for w in ("tv_weight", "bn_weight") if getattr(self.objective, w) > 0 and w not in self.kind.priors]
        if unused:
            raise ValueError(f"{unused[0]} is a prior of images; {self.kind.name} data has none: set it to 0")
        if self.budget.refine_steps > 0 and not self.kind.can_harden:
            raise ValueError(f"refine_steps (fixing categorical features, then refining the rest) applies to tables, "
                             f"not to {self.kind.name} data: set it to 0")
        self._free = None
        self._client_net = None
        self._observed_sq = None
        V, B, R = observation.num_victims, observation.batch_size, self.dummies.restarts
        P = V * R
        observed = observation.gradient_estimate()  # FedAvg: pseudo-gradient units, whichever the client shares
        self.param_names = shared_names(self.param_names, observed)  # a client that trains part of the model
        for i, name in enumerate(self.param_names):
            g = observed[name].repeat_interleave(R, dim=0)
            self.register_buffer(f"observed_{i}", g, persistent=False)
        if observation.client is not None and self.objective.bn_weight > 0:
            raise ValueError("bn_weight (the BatchNorm-statistics prior) is modelled for FedSGD updates only: "
                             "use --model.objective.bn_weight 0 with --data.client FedAvg")
        if observation.client is not None and V > 0:  # FedAvg: each problem's public mini-batch order
            sched = schedules(observation.client, B, observation.update_keys).repeat_interleave(R, dim=0)
            self.register_buffer("schedule", sched, persistent=False)
        x, label_logits = self.initial_dummies(observation)
        self.dummy_data = nn.Parameter(x)
        if hp.labels == "joint":
            self.dummy_labels = nn.Parameter(label_logits)
        else:
            y = public_labels(observation) if hp.labels == "known" else observed_labels(  # [V, B]
                self.target, label_gradients(observation), B, observation.input_shape, hp.labels,
                observation.data_range, notes=self.notes)
            self.register_buffer("fixed_labels", y.repeat_interleave(R, dim=0), persistent=False)
        self.failed = torch.zeros(P, dtype=torch.bool)
        self._loss_scale = None
        self.best.reset()

    def initial_dummies(self, observation: Observation) -> tuple[Tensor, Tensor]:
        """Every problem's initial dummies ``[P, B, *sample_shape]`` (the kind's parameters) and
        soft-label logits ``[P, B, K]``.

        Problem ``(victim v, restart r)`` draws from its own generator, seeded by ``(init_seed, the
        update's key, r)``: its start, and so its result, do not depend on the other problems of the
        run, their order, the chunking or the number of processes.
        """
        hp = self.hparams
        B = observation.batch_size
        if not observation.update_keys:  # a process with an empty shard
            return torch.zeros(0, B, *observation.input_shape), torch.zeros(0, B, hp.num_classes)
        kind = observation.kind.relaxed(self.dummies.relax)
        xs, logits = [], []
        for key in observation.update_keys:
            for r in range(self.dummies.restarts):
                gen = generator("dummy", self.dummies.init_seed, key, r)
                xs.append(kind.initial(B, self.dummies.init, gen))
                logits.append(torch.randn((observation.batch_size, hp.num_classes), generator=gen))
        return torch.stack(xs), torch.stack(logits)

    @property
    def done_check_interval(self) -> int:
        every = self.budget.check_done_every
        if every is None:
            return 1 if getattr(self.optimizer, "early_exit", False) else 10
        return every

    def point(self) -> tuple[Tensor, ...]:
        """The current iterate: the dummies and, with joint labels, the soft-label logits."""
        if self.hparams.labels == "joint":
            return self.dummy_data, self.dummy_labels
        return (self.dummy_data,)

    def _reported(self) -> tuple[Tensor, ...]:
        """The reported iterate: each problem's best so far (the current one before any evaluation)."""
        return tuple(p.detach() for p in self.point()) if self.best.empty else self.best.point

    @property
    def best_losses(self) -> Optional[Tensor]:
        """Each problem's lowest loss so far ``[P]``: the loss of what :meth:`reconstruction` reports."""
        return self.best.loss

    @property
    def loss_scale(self) -> Tensor:
        """Each problem's own loss scale ``[P]``, which ``stop_relative`` is a fraction of: for ``l2`` the
        squared norm of its observed gradient (the distance of a dummy whose gradient is 0); ``cosine``
        is relative already (1)."""
        if self._loss_scale is None or self._loss_scale.shape[0] != self.num_problems:
            observed = self.observed()
            if self.objective.distance == "l2":
                self._loss_scale = sum(o.detach().double().flatten(1).pow(2).sum(1) for o in observed)
            else:
                self._loss_scale = torch.ones(self.num_problems, dtype=torch.float64, device=observed[0].device)
        return self._loss_scale

    def reconstruction(self) -> Tensor:
        """Every problem's best iterate as the model input it stands for ``[P, B, *sample_shape]``."""
        with torch.no_grad():
            return self.kind.to_input(self._reported()[0])

    def recovered_labels(self) -> Tensor:
        """Hard labels ``[P, B]`` of every problem's best iterate."""
        if self.hparams.labels == "joint":
            return self._reported()[1].argmax(dim=-1)
        return self.fixed_labels

    # -------------------------------------------------------------- objective
    def on_fit_start(self) -> None:
        if self.trainer.max_steps is None or self.trainer.max_steps < 1:
            raise ValueError("set the attack budget with --trainer.max_steps N (one step is one attack iteration)")
        self.budget.check(self.trainer.max_steps)  # the API's runs too, not only the CLI's
        self.stopping.reset()
        if self.device.type == "cpu":  # every step frees and allocates the same tensors: keep their pages
            keep_freed_memory()

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        refine = self.budget.refine_steps
        if refine and self._free is None and self.trainer.global_step >= self.trainer.max_steps - refine:
            self.start_refining()
        if self.objective.group_weight > 0:
            with full_precision():
                self.update_consensus()

    @torch.no_grad()
    def start_refining(self) -> None:
        """Stage two of ``refine_steps``: categorical features fixed to their argmax (the kind's
        :meth:`harden_`), their gradient masked out from now on, the optimizer's state restarted."""
        self._free = self.kind.harden_(self.dummy_data)
        self.dummy_data.register_hook(lambda g: g * self._free.to(g))
        self.best.reset()  # stage two reports hard rows: its best iterate is kept from here on
        for opt in self.trainer.optimizers:
            (opt.optimizer if hasattr(opt, "optimizer") else opt).state.clear()

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        subset = self._evaluating
        losses = self.matching_loss(subset=subset)
        detached = losses.detach()
        evaluated = torch.ones_like(self.failed) if subset is None else subset
        self.failed |= evaluated & ~torch.isfinite(detached)
        if self.problem_losses is None or subset is None:
            self.problem_losses = detached
        else:
            self.problem_losses = torch.where(evaluated, detached, self.problem_losses)
        # the losses were evaluated at the parameters as they are now (L-BFGS's trial points too)
        self.best.offer(detached, self.point())
        return losses.nansum()

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        # one attack iteration, objective and backward included, in full float32 (no TF32)
        with full_precision():
            self._optimizer_step(optimizer, optimizer_closure)

    def _optimizer_step(self, optimizer, optimizer_closure) -> None:
        # the batched optimizers take per-problem losses from the closure; Lightning's closure runs
        # training_step, zero_grad and backward and returns the summed loss
        opt = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
        if self.num_problems == 0:  # a process with an empty shard keeps step with the others
            optimizer_closure()
            return

        def closure() -> Tensor:
            # BatchedLBFGS says which problems it still needs; the others are not evaluated
            self._evaluating = getattr(opt, "evaluating", None)
            optimizer_closure()
            return self.problem_losses

        params = [p for group in opt.param_groups for p in group["params"]]
        if isinstance(opt, BatchedLBFGS):
            opt.frozen = self.stopping.stopped  # stopped problems: not evaluated, not moved
        else:
            self.stopping.hold(params, moved=False)
        optimizer.step(closure=closure)
        if not isinstance(opt, BatchedLBFGS):
            self.stopping.hold(params, moved=True)
        self._evaluating = None
        if isinstance(opt, BatchedLBFGS):
            self.failed |= opt.failed.to(self.failed.device)
        if self.dummies.box_constraint:
            with torch.no_grad():
                self.kind.project_(self.dummy_data)

    def done(self) -> Tensor:
        """Mask ``[P]`` of problems with nothing left to do: failed, stopped by the stopping rule, or
        (L-BFGS) at a fixed point."""
        done = self.failed.clone()
        if self.stopping.stopped is not None:
            done |= self.stopping.stopped.to(done.device)
        if self._trainer is not None and self.trainer.optimizers:
            opt = self.trainer.optimizers[0]
            opt = opt.optimizer if hasattr(opt, "optimizer") else opt
            if isinstance(opt, BatchedLBFGS):
                done |= opt.stalled.to(done.device)
        return done

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.best_losses is not None:
            ok = torch.isfinite(self.best_losses)
            # the mean over the finite losses, without reading the mask back (NaN when none is finite);
            # progress bar only: TensorBoard gets the median and the per-victim losses (leakage.reporting.dashboard).
            # Logged once per step, not from training_step, which L-BFGS runs up to max_iter times a
            # step (each self.log goes through Lightning's result collection); the bar shows one value
            mean = torch.where(ok, self.best_losses, torch.zeros_like(self.best_losses)).sum() / ok.sum()
            self.log(LOGGED_METRICS[0], mean, prog_bar=True, on_step=True, logger=False)
            if self.stopping.enabled:
                self.stopping.update(self.problem_losses, self.loss_scale if self.stopping.stop_relative > 0 else None)
        every = self.done_check_interval
        # every problem failed or converged: nothing is left to do. Sharded over processes, the run
        # ends only when that holds on every rank (one all-reduce, the same answer everywhere), so all
        # ranks run the same steps and meet at the report's gathers
        if every and (self.trainer.global_step % every == 0) and all_done(self.trainer, bool(self.done().all())):
            self.trainer.should_stop = True

    def configure_optimizers(self):
        params = [self.dummy_data] + ([self.dummy_labels] if self.hparams.labels == "joint" else [])
        max_steps = self.trainer.max_steps if self._trainer is not None else None  # (lr_decay reads it)
        return self.optimizer.build(params, max_steps, self.fixed_shape)

    # ------------------------------------------------------------- results
    @torch.no_grad()
    def final_evaluation(self) -> dict[str, Tensor]:
        """Per-problem objective, gradient L2 and cosine distances at each problem's best iterate
        (the last iterate, which no step has evaluated yet, is offered first)."""
        with full_precision():
            self.best.offer(self.matching_loss(), self.point())
            if self.num_problems == 0:
                empty = torch.zeros(0, device=self.dummy_data.device)
                return {"loss": empty, "grad_l2": empty, "grad_cosine": empty}
            x, *labels = self._reported()
            labels = labels[0] if labels else None
            # the three distances from one evaluation of the gradients, chunk by chunk like the attack's
            terms = ((None, True), ("l2", False), ("cosine", False))
            chunk = self.problems_at_once()
            if chunk is None or chunk >= self.num_problems:
                parts = [self._objectives(x, labels, None, terms)]
            else:
                parts = [self._objectives(x[c], labels[c] if labels is not None else None, c, terms)
                         for c in self._chunks(self.num_problems, None, chunk)]
            out = {k: torch.cat([p[i] for p in parts]) for i, k in enumerate(("loss", "grad_l2", "grad_cosine"))}
        return {k: v.detach() for k, v in out.items()}
