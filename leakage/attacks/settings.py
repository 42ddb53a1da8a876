"""The optimisation attack's settings, one small object per concern (``GradientInversion``'s arguments).

- :class:`Objective`: what is minimised (the gradient distance and the priors) and how it is evaluated.
- :class:`Optimizer`: :class:`Adam`, :class:`SignedAdam` or :class:`LBFGS`, each with its own settings.
- :class:`Dummies`: the restarts per victim, their start, parametrisation, projection and ensembling.
- :class:`Budget`: when a problem stops before ``--trainer.max_steps`` and TabLeak's second stage.

In a config (``model:``)::

    objective:
      distance: cosine
      tv_weight: 0.001
    optimizer:
      class_path: SignedAdam
      init_args:
        lr: 0.01
        lr_decay: true

On the command line: ``--model.objective.distance cosine --model.optimizer SignedAdam
--model.optimizer.lr 0.01``; ``leakage fit --model.optimizer.help LBFGS`` lists one class's settings.
Each class validates its own settings in one-line ``ValueError``\\ s.
"""

from __future__ import annotations

import abc
import inspect
import sys
from typing import Any, Iterable, Literal, Optional

import jsonargparse
import torch

from leakage.engine import checks
from leakage.engine.losses import DISTANCES
from leakage.engine.optim import BatchedLBFGS
from leakage.engine.optim import SignedAdam as SignedAdamOptimizer
from leakage.engine.stopping import StoppingRule

INITS = ("randn", "uniform", "constant")
ENSEMBLES = ("best", "pool")
COMPILE = ("auto", "on", "off")


def _choice(what: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")


def lazy_instance(class_type: type, **kwargs: Any) -> Any:
    """jsonargparse's ``lazy_instance``: a settings default the CLI shows and saves as ``class_path`` and
    ``init_args``, built at its first use, made for the calling module, as jsonargparse makes it. jsonargparse
    finds that module with ``inspect.stack()``, which reads every frame's source up the stack (at import time
    importlib's too, each a scan of ``sys.modules``): about 0.4 s of CPU a default, 5 s of every process's start.
    Here ``inspect.stack`` gives it only the caller's frame while it runs."""
    caller, stack = sys._getframe(1), inspect.stack
    inspect.stack = lambda context=1: [None, (caller,)]
    try:
        return jsonargparse.lazy_instance(class_type, **kwargs)
    except (IndexError, TypeError):  # a jsonargparse that reads the stack otherwise: its own walk, as before
        inspect.stack = stack
        return jsonargparse.lazy_instance(class_type, **kwargs)
    finally:
        inspect.stack = stack


def settings_class(obj: Any) -> type:
    """The settings class of ``obj`` (a default given as ``lazy_instance`` is an instance of a subclass)."""
    return next(c for c in type(obj).__mro__ if c.__module__ == __name__)


class Settings:
    """A settings object: its ``__init__`` arguments, kept as attributes of the same names."""

    def settings(self) -> dict[str, Any]:
        """The object's settings ``{name: value}`` (its ``__init__`` arguments)."""
        return {name: getattr(self, name) for name in inspect.signature(settings_class(self).__init__).parameters
                if name != "self"}

    def replace(self, **changes: Any) -> "Settings":
        """A copy with ``changes`` (validated again)."""
        return settings_class(self)(**{**self.settings(), **changes})

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Settings) and settings_class(self) is settings_class(other)
                and self.settings() == other.settings())

    def __repr__(self) -> str:
        return f"{settings_class(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.settings().items())})"


class Objective(Settings):
    """The per-problem objective: a gradient distance plus priors, and how it is evaluated.

    Args:
        distance: ``l2`` (DLG), ``cosine`` (Inverting Gradients) or ``tag`` (TAG: L2 plus 0.1 x L1).
        tv_weight: weight of the total-variation prior of images (0 disables it).
        bn_weight: weight of the BatchNorm-statistics prior (``R_BN`` of Yin et al., 2021): for every
            BatchNorm layer, the L2 distances of the dummy batch's per-channel mean and variance at
            that layer's input to the layer's running statistics, summed. For trained models; needs
            BatchNorm layers; 0 disables it.
        group_weight: weight of group consistency (GradInversion, Yin et al., 2021): before every
            step the restarts of a victim are aligned to its first restart (an optimal assignment of
            batch slots with equal labels on pixel MSE) and averaged, and each restart is pulled
            towards that consensus by ``group_weight`` x its mean squared distance. Needs
            ``dummies.restarts >= 2``; 0 disables it.
        problems_per_chunk: evaluate at most this many problems at once (bounds the memory of the
            model's double backward; the result is the same to float32 rounding). None (auto): one at
            a time on the CPU for a model of at least
            :data:`leakage.attacks.matching.SERIAL_PARAMETERS` parameters, all at once
            otherwise.
        compile: compile the objective and its backward with ``torch.compile`` (on CUDA in
            ``reduce-overhead`` mode). ``auto``: on a GPU only; ``on``; ``off``. Where compiling fails
            the attack runs eagerly and says so in one line. Compiling implies ``fixed_shape``.
        fixed_shape: evaluate every problem at every closure, masking out the rows L-BFGS no longer
            needs, instead of indexing the active ones: fixed shapes, nothing read back to the host
            (what lets an iteration be captured as a graph). None (auto): fixed on a GPU, variable on
            the CPU (faster there: docs/benchmarks.md, Speed).
        exclude: parameters left out of the gradient distance, each a parameter name or a module's
            name (``fc`` leaves out ``fc.weight`` and ``fc.bias``): the adaptive attacker against a
            defense that perturbs one layer's gradient (Soteria) matches the others. None: all.
    """

    def __init__(self, distance: Literal["l2", "cosine", "tag"] = "l2", tv_weight: float = 0.0, bn_weight: float = 0.0,
                 group_weight: float = 0.0, problems_per_chunk: Optional[int] = None,
                 compile: Literal["auto", "on", "off"] = "auto", fixed_shape: Optional[bool] = None,
                 exclude: Optional[list[str]] = None) -> None:
        _choice("distance", distance, DISTANCES)
        _choice("compile setting", compile, COMPILE)
        for name, value in (("tv_weight", tv_weight), ("bn_weight", bn_weight), ("group_weight", group_weight)):
            checks.float32_number(name, value)
            if value < 0:
                raise ValueError(f"{name} must be >= 0 (0: off), got {value}")
        if problems_per_chunk is not None and problems_per_chunk < 1:
            raise ValueError(f"problems_per_chunk must be >= 1, got {problems_per_chunk}")
        if compile == "on" and fixed_shape is False:
            raise ValueError("compile 'on' needs fixed shapes: drop fixed_shape false or set compile off")
        self.distance, self.tv_weight, self.bn_weight, self.group_weight = distance, tv_weight, bn_weight, group_weight
        self.problems_per_chunk, self.compile, self.fixed_shape = problems_per_chunk, compile, fixed_shape
        if exclude is not None and (isinstance(exclude, str) or not all(isinstance(e, str) and e for e in exclude)):
            raise ValueError(f"exclude must be a list of parameter or module names, got {exclude!r}")
        self.exclude = None if exclude is None else list(exclude)

    def matched(self, names: Iterable[str]) -> list[str]:
        """The parameter ``names`` the distance reads: all but those :attr:`exclude` names (a name, or
        a module's name and so every parameter under it). A name of ``exclude`` that leaves out no
        parameter, or one that leaves out all of them, is refused in one line."""
        names = list(names)
        if not self.exclude:
            return names

        def left_out(name: str, e: str) -> bool:
            return name == e or name.startswith(e + ".")

        unknown = [e for e in self.exclude if not any(left_out(n, e) for n in names)]
        if unknown:
            raise ValueError(f"objective.exclude {unknown[0]!r} names no parameter of the model; its parameters are "
                             f"{', '.join(names[:8])}{', ...' if len(names) > 8 else ''}")
        kept = [n for n in names if not any(left_out(n, e) for e in self.exclude)]
        if not kept:
            raise ValueError("objective.exclude leaves out every parameter: nothing is left to match")
        return kept


class Optimizer(Settings, abc.ABC):
    """The optimizer of the dummies: :class:`Adam`, :class:`SignedAdam` or :class:`LBFGS`."""

    #: the optimizer's name in reports
    name = ""

    def __init__(self, lr: float = 1.0) -> None:
        checks.float32_number("lr", lr)
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.lr = lr

    @abc.abstractmethod
    def build(self, params: list[torch.Tensor], max_steps: Optional[int], fixed_shape: bool) -> Any:
        """What ``configure_optimizers`` returns for ``params`` and a budget of ``max_steps``."""


class Adam(Optimizer):
    """Adam.

    Args:
        lr: learning rate.
        lr_decay: divide the lr by 10 at 3/8, 5/8 and 7/8 of ``max_steps`` (as Inverting Gradients does).
    """

    name = "adam"
    _optimizer = torch.optim.Adam

    def __init__(self, lr: float = 1.0, lr_decay: bool = False) -> None:
        super().__init__(lr)
        self.lr_decay = lr_decay

    def build(self, params: list[torch.Tensor], max_steps: Optional[int], fixed_shape: bool) -> Any:
        opt = self._optimizer(params, lr=self.lr)
        if not self.lr_decay:
            return opt
        if max_steps is None:
            raise ValueError("lr_decay needs the attack's budget: run the attack with a Trainer's max_steps")
        milestones = [int(max_steps * f) for f in (3 / 8, 5 / 8, 7 / 8)]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class SignedAdam(Adam):
    """Adam on the sign of the gradient (Inverting Gradients), :class:`leakage.engine.optim.SignedAdam`.

    Args:
        lr: learning rate.
        lr_decay: divide the lr by 10 at 3/8, 5/8 and 7/8 of ``max_steps`` (as Inverting Gradients does).
    """

    name = "signed_adam"
    _optimizer = SignedAdamOptimizer


class LBFGS(Optimizer):
    """Batched L-BFGS (:class:`leakage.engine.optim.BatchedLBFGS`: each problem its own history), as DLG.

    Args:
        lr: learning rate.
        max_iter: inner iterations per step (torch's default 20, as DLG).
        history_size: curvature pairs kept per problem (torch's default 100).
        tolerance_grad: a problem whose largest gradient entry is at most this stops (torch's 1e-7).
        tolerance_change: a step ends for a problem whose loss or step changes by less than this
            (torch's default 1e-9).
        early_exit: end a step as soon as none of its problems is active, as ``torch.optim.LBFGS``
            does (one flag read back per inner iteration). False: every step runs ``max_iter`` masked
            inner iterations and reads nothing back (the same iterates, more arithmetic: measured 6x
            slower on the CPU once problems converge).
    """

    name = "lbfgs"

    def __init__(self, lr: float = 1.0, max_iter: int = 20, history_size: int = 100, tolerance_grad: float = 1e-7,
                 tolerance_change: float = 1e-9, early_exit: bool = True) -> None:
        super().__init__(lr)
        for key, value in (("max_iter", max_iter), ("history_size", history_size)):
            if value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        for key, value in (("tolerance_grad", tolerance_grad), ("tolerance_change", tolerance_change)):
            checks.float32_number(key, value)
            if value < 0:
                raise ValueError(f"{key} must be >= 0, got {value}")
        self.max_iter, self.history_size = max_iter, history_size
        self.tolerance_grad, self.tolerance_change, self.early_exit = tolerance_grad, tolerance_change, early_exit

    def build(self, params: list[torch.Tensor], max_steps: Optional[int], fixed_shape: bool) -> Any:
        return BatchedLBFGS(params, lr=self.lr, max_iter=self.max_iter, history_size=self.history_size,
                            tolerance_grad=self.tolerance_grad, tolerance_change=self.tolerance_change,
                            early_exit=self.early_exit, active_only=self.early_exit and not fixed_shape)


class Dummies(Settings):
    """The dummies: how many per victim, how they start, how they are parametrised and combined.

    Args:
        restarts: independent dummies per victim; the one whose best iterate has the lowest matching
            loss is kept. Every problem reports its best iterate (the dummies with the lowest
            objective evaluated, :mod:`leakage.engine.bestiterate`), not its last.
        init: ``randn`` (DLG), ``uniform`` (in the data range) or ``constant`` (the middle of the range).
        init_seed: seed of the start; each problem draws from its own generator, seeded by
            ``(init_seed, its update's key, its restart)``.
        relax: TabLeak's relaxation of table rows: the dummy holds a softmax's logits for each
            categorical feature and a sigmoid's argument for each continuous one (mapped into its
            bounds). Tables only.
        box_constraint: project the dummies after every step (images: clamp to the data range;
            unrelaxed table rows: continuous values clamped to their bounds).
        ensemble: ``best`` (the restart with the lowest matching loss) or ``pool`` (TabLeak's pooled
            ensembling: every restart's batch slots matched to the best restart's by the Hungarian
            algorithm, then combined by the data kind: mean of the softmaxes and median for tables;
            it gives an entropy per reconstructed feature).
    """

    def __init__(self, restarts: int = 1, init: Literal["randn", "uniform", "constant"] = "randn",
                 init_seed: int = 0, relax: bool = False, box_constraint: bool = False,
                 ensemble: Literal["best", "pool"] = "best") -> None:
        if restarts < 1:
            raise ValueError(f"restarts must be >= 1, got {restarts}")
        _choice("init", init, INITS)
        _choice("ensemble", ensemble, ENSEMBLES)
        checks.seed("init_seed", init_seed)
        self.restarts, self.init, self.init_seed = restarts, init, init_seed
        self.relax, self.box_constraint, self.ensemble = relax, box_constraint, ensemble


class Budget(Settings):
    """When problems stop before ``--trainer.max_steps``, and TabLeak's second stage.

    Args:
        stop_loss, stop_relative, stop_change, stall_steps, stall_improvement: a budget that adapts,
            per problem (:class:`leakage.engine.stopping.StoppingRule`): a problem stops once its
            matching loss is at most ``stop_loss``, or at most ``stop_relative`` times its
            observation's own scale (``l2``: the squared norm of the observed gradient; ``cosine``:
            1), or changed by less than ``stop_change`` (relative) in one step, or its best loss
            improved by less than ``stall_improvement`` (relative) over the last ``stall_steps``
            steps; the run ends when every problem has stopped (``max_steps`` is then a cap). 0 turns
            a test off; all 0 (the default): a fixed budget.
        refine_steps: TabLeak's two-staged mode (tables): the last this many of ``max_steps`` fix every
            categorical feature to its current argmax and optimize the continuous features alone (the
            optimizer's state restarted). Needs Adam or SignedAdam. 0 disables it.
        check_done_every: every this many steps, end the run if every problem is done: failed,
            stopped, or (L-BFGS) at a fixed point. Each check reads one flag back. None (auto):
            every step with L-BFGS's ``early_exit``, else every 10 steps; 0: never.
    """

    def __init__(self, stop_loss: float = 0.0, stop_relative: float = 0.0, stop_change: float = 0.0,
                 stall_steps: int = 0, stall_improvement: float = 0.0, refine_steps: int = 0,
                 check_done_every: Optional[int] = None) -> None:
        StoppingRule(stop_loss, stop_change, stall_steps, stall_improvement, stop_relative)  # validates them
        if refine_steps < 0:
            raise ValueError(f"refine_steps must be >= 0 (0: off), got {refine_steps}")
        if check_done_every is not None and check_done_every < 0:
            raise ValueError(f"check_done_every must be >= 0 (0: never), got {check_done_every}")
        self.stop_loss, self.stop_relative, self.stop_change = stop_loss, stop_relative, stop_change
        self.stall_steps, self.stall_improvement = stall_steps, stall_improvement
        self.refine_steps, self.check_done_every = refine_steps, check_done_every

    def check(self, max_steps: int) -> None:
        """Refuse a ``refine_steps`` that leaves the first stage no step of ``max_steps``."""
        if self.refine_steps and self.refine_steps >= max_steps:
            raise ValueError(f"refine_steps ({self.refine_steps}) must be below --trainer.max_steps ({max_steps}): "
                             f"the first stage, which finds the categorical features, needs steps")


#: the optimizer classes by the name ``optimizer=`` may give (:func:`apply_options`)
OPTIMIZERS = {c.name: c for c in (LBFGS, Adam, SignedAdam)}
#: the attack's arguments that are settings objects, in the order a setting's name is looked up
GROUPS = {"objective": Objective, "optimizer": LBFGS, "dummies": Dummies, "budget": Budget}


def apply_options(settings: dict[str, Any], options: dict[str, Any], arguments: Iterable[str]) -> dict[str, Any]:
    """The attack's arguments: ``settings`` (a preset's) with ``options`` applied, as the Python API's
    ``invert(**options)`` takes them.

    An option is an argument of the attack class (one of ``arguments``: ``labels="idlg"``,
    ``objective=Objective(...)``, ``optimizer=Adam(lr=0.1)``), or one setting of the attack's objects by
    its name, which changes only that setting (``tv_weight=0.01``, ``lr=0.1``, ``max_iter=5``); then the
    object not given is its class's default. ``optimizer="adam"`` (``"signed_adam"``, ``"lbfgs"``)
    picks the optimizer class and keeps the current ``lr``. Raises a one-line ``ValueError`` for an
    unknown option or a setting the chosen optimizer does not have."""
    arguments = set(arguments)
    settings = dict(settings)
    flat: dict[str, Any] = {}
    for key, value in options.items():
        if key == "optimizer" and "optimizer" in arguments and isinstance(value, str):
            if value not in OPTIMIZERS:
                raise ValueError(f"unknown optimizer {value!r}; choose one of {', '.join(OPTIMIZERS)}")
            current = settings.get("optimizer", LBFGS())
            settings["optimizer"] = OPTIMIZERS[value](lr=current.lr)
        elif key in arguments:
            settings[key] = value
        else:
            flat[key] = value
    if not flat:
        return settings
    if not set(GROUPS) <= arguments:
        raise ValueError(f"unknown attack option {next(iter(flat))!r}")
    for name, group in GROUPS.items():
        settings.setdefault(name, group())
    for key, value in flat.items():
        owner = next((name for name in GROUPS if key in settings[name].settings()), None)
        if owner is None:
            taken = sorted({k for name in GROUPS for k in settings[name].settings()})
            raise ValueError(f"unknown attack option {key!r} (with optimizer {settings['optimizer'].name!r}); "
                             f"the settings are: {', '.join(taken)}")
        settings[owner] = settings[owner].replace(**{key: value})
    return settings
