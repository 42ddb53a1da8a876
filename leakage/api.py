"""The Python API: attack your own model from your own code, with the engine ``leakage fit`` runs.

::

    import leakage
    update = leakage.client_update(model, x, y)                  # what the client shares
    result = leakage.invert(model, update, input_shape=(1, 28, 28), num_classes=10, attack="dlg")
    print(leakage.report(result, x, y))                          # SSIM / PSNR / MSE / label accuracy

:func:`invert` builds the same attack LightningModule as ``leakage fit`` (an optimisation attack,
:class:`~leakage.attacks.gradient_inversion.GradientInversion`, or a closed-form one such as
:class:`~leakage.attacks.analytic.AnalyticInversion`) and runs it with a Lightning ``Trainer``, as the CLI does; :func:`report` scores it with the same metrics and
table. Only :func:`report` reads the victims' data. :func:`~leakage.audit.run.audit` is the client's side: it
checks the model a server sent (``leakage audit`` on the command line).
"""

from __future__ import annotations

import copy
import inspect
import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from leakage.federated.client import CLIENT_MODES, check_labels, client_gradients, validate_gradients
from leakage.data.datamodule import _Steps
from leakage.records import InversionResult, Observation, summarize, victim_rows
from leakage.data.kinds import DataKind, ImageKind
from leakage.federated.defenses import Defense, SecureAggregation
from leakage.engine.errors import LIGHTNING_HINTS
from leakage.attacks.family import attack_class
from leakage.attacks.settings import Dummies, apply_options
from leakage.federated.fedavg import FedAvg, FedAvgClient, client_updates
from leakage.engine.models import check_weights, model_name
from leakage.presets import preset
from leakage.engine.seeding import position_key
from leakage.reporting.runreport import format_table
from leakage.reporting.views import view_of
from leakage.federated.server import HONEST, Server
from leakage.data.sources import Bundled
from leakage.audit.run import audit as _audit


#: the client's check of the model it received (:func:`leakage.audit.run.audit`; ``leakage audit``)
audit = _audit


def bundled_images(dataset: str = "mnist", indices: Sequence[int] = (0,)) -> tuple[Tensor, Tensor]:
    """Images ``[N, C, H, W]`` in [0, 1] and labels ``[N]`` from the test images shipped in the package
    (``mnist``: test-split indices 0-999; ``cifar10``: 0-19): a private batch to try the attack on, offline."""
    from leakage.data.datamodule import VictimDataModule

    secret = VictimDataModule(Bundled(dataset), indices=list(indices)).load_victims()
    return secret.images.flatten(0, 1), secret.labels.flatten()


def _batched(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, bool]:
    """``x`` ``[B, *sample_shape]`` / ``y`` ``[B]`` (one update) or ``[V, B, *sample_shape]`` / ``[V, B]``
    (several): images ``[B, C, H, W]``, table rows ``[B, D]``."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError("x and y must be tensors: images [B, C, H, W] and labels [B] (or [V, B, ...] for V updates)")
    if x.dim() >= 2 and y.dim() == 1:
        return x[None], y[None], True
    if x.dim() >= 3 and y.dim() == 2:
        return x, y, False
    raise ValueError(f"x of shape {tuple(x.shape)} and y of shape {tuple(y.shape)} do not fit: give records "
                     "[B, *sample_shape] (images [B, C, H, W], rows [B, D]) with labels [B], or [V, B, ...] with [V, B]")


def _fedavg_client(fedavg: object, batch_size: int) -> Optional[FedAvgClient]:
    """``fedavg`` for a batch of ``batch_size`` (a :class:`~leakage.federated.fedavg.FedAvg` client, as
    ``--data.client FedAvg`` takes it, or its :class:`~leakage.federated.fedavg.FedAvgClient` settings), checked."""
    if fedavg is None:
        return None
    if isinstance(fedavg, FedAvg):
        return fedavg.for_batch(batch_size)
    if not isinstance(fedavg, FedAvgClient):
        raise TypeError(f"fedavg must be a leakage.FedAvg (or FedAvgClient), got {type(fedavg).__name__}")
    fedavg.mini_batch(batch_size)  # a mini-batch that does not fit the batch is a one-line error
    return fedavg


def client_update(model: nn.Module, x: Tensor, y: Tensor, mode: str = "train",
                  defenses: Sequence[Defense] = (), fedavg: Optional[FedAvg | FedAvgClient] = None) -> dict[str, Tensor]:
    """What an FL client shares: the gradient of the mean cross-entropy of its batch, as
    ``model.train(); loss.backward()`` computes it (``mode="train"``: BatchNorm with the batch's own
    statistics, dropout off) or in eval mode, after the client-side ``defenses`` (noise, clipping,
    top-k, DP; seeded per update). With ``fedavg`` (a :class:`~leakage.federated.fedavg.FedAvg` client: local
    steps or epochs, local lr, mini-batch size, ...; or its :class:`~leakage.federated.fedavg.FedAvgClient`
    settings) it is instead the FedAvg update after those local SGD
    steps; pass the same ``fedavg`` to :func:`invert`. The model, its running statistics included,
    is left as it was.

    ``x`` ``[B, C, H, W]`` (or table rows ``[B, D]``) with labels ``y`` ``[B]`` gives one update ``{name:
    tensor shaped like the parameter}``; ``[V, B, ...]`` with ``[V, B]`` gives V updates ``{name: [V, *shape]}``.
    """
    xb, yb, single = _batched(x, y)
    check_weights(model, model_name(model))  # the batch itself is checked by the client (leakage.federated.client.check_batch)
    device = next(model.parameters()).device
    keys = [position_key(v) for v in range(xb.shape[0])]  # what invert keys the updates by
    fedavg = _fedavg_client(fedavg, xb.shape[1])
    if fedavg is None:
        grads = client_gradients(model, xb.to(device), yb.to(device), mode)
    else:
        grads = client_updates(model, xb.to(device), yb.to(device), fedavg, keys, mode)
    if defenses:
        if any(isinstance(d, SecureAggregation) for d in defenses):
            raise ValueError("SecureAggregation sums several clients' updates: run it with `leakage fit` (a defense "
                             "of the data module), not on one client's update")
        for d in defenses:
            grads = d.apply(grads, keys)
    return {k: (v[0] if single else v) for k, v in grads.items()}


def _accelerator(device: Union[str, torch.device, None], model: nn.Module) -> dict[str, Any]:
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    if device.type == "cpu":
        return {"accelerator": "cpu", "devices": 1}
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but this machine has no CUDA GPU: use device='cpu'")
        return {"accelerator": "gpu", "devices": [device.index or 0]}
    if device.type == "mps":
        return {"accelerator": "mps", "devices": 1}
    raise ValueError(f"unsupported device {str(device)!r}: use 'cpu', 'cuda', 'cuda:N' or 'mps'")


@contextmanager
def _quiet_lightning(show: bool) -> Iterator[None]:
    """Lightning's start-up lines and hints that do not apply to an attack, off unless asked for."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed",
                                               "lightning.pytorch.accelerators.cuda")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        if not show:
            for lg in loggers:
                lg.setLevel(logging.WARNING)
        for msg in LIGHTNING_HINTS:
            warnings.filterwarnings("ignore", message=msg)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


#: Trainer arguments that are invert's own arguments
_OWN_TRAINER_ARGS = {"max_steps": "steps", "enable_progress_bar": "progress_bar", "logger": None,
                     "enable_checkpointing": None, "enable_model_summary": None, "num_sanity_val_steps": None,
                     "limit_val_batches": None}


def _trainer_settings(options: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """``trainer_options`` checked: a mapping of ``Trainer`` arguments that ``invert`` does not set itself."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"trainer_options must be a dict of lightning Trainer arguments, got {type(options).__name__}")
    known = inspect.signature(pl.Trainer.__init__).parameters
    for key in options:
        if key in _OWN_TRAINER_ARGS:
            own = _OWN_TRAINER_ARGS[key]
            raise ValueError(f"trainer_options {key!r} is set by invert itself" +
                             (f": use invert's argument {own}=" if own else ""))
        if key not in known:
            raise ValueError(f"trainer_options {key!r} is not an argument of lightning's Trainer")
    return dict(options)


def invert(
    model: nn.Module,
    update: Mapping[str, Tensor],
    input_shape: Sequence[int],
    num_classes: int,
    attack: str = "dlg",
    batch_size: int = 1,
    restarts: int = 1,
    steps: Optional[int] = None,
    device: Union[str, torch.device, None] = None,
    client_mode: str = "train",
    fedavg: Optional[FedAvg | FedAvgClient] = None,
    data_range: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
    progress_bar: bool = False,
    kind: Optional[DataKind] = None,
    server: Optional[Server] = None,
    known_labels: Optional[Tensor] = None,
    trainer_options: Optional[dict[str, Any]] = None,
    **options: Any,
) -> InversionResult:
    """Reconstruct the client data behind ``update`` (what :func:`client_update` or a real client shared).

    Args:
        model: the target model, with the weights the client used (it is copied, never changed).
        update: ``{parameter name: gradient}``, one update (each tensor shaped like its parameter)
            or several (a leading update dimension).
        input_shape, num_classes, batch_size: public metadata: ``[C, H, W]``, the number of classes,
            the images in one update.
        attack: a preset: ``dlg``, ``idlg``, ``inverting_gradients``, ``fast`` (optimisation attacks),
            ``analytic`` (the closed-form inversion of a fully connected first layer; exact for one
            image per update), ``cpa`` (the Cocktail Party Attack: ICA unmixes a batch from a fully
            connected first layer's gradient), ``imprint`` or ``trap_weights`` (a malicious ``server``'s
            closed-form read-outs) (:mod:`leakage.presets`).
        restarts: independent starts per update; the one with the lowest matching loss is kept
            (a closed-form attack has one solution: 1).
        steps: attack iterations (default: the preset's).
        device: ``cpu``, ``cuda``, ``cuda:N``; default the model's device.
        client_mode: how the client ran the model (``train``: BatchNorm batch statistics; ``eval``).
        fedavg: the client's public FedAvg settings when the update is a FedAvg update (several
            local SGD steps): the same ``FedAvg`` (or ``FedAvgClient``) given to :func:`client_update`; the
            attack then simulates those steps. None: one gradient (FedSGD).
        data_range: the range of the images' values.
        kind: the kind of data (:mod:`leakage.data.kinds`), e.g. ``TabularKind(schema)`` for table rows
            ``input_shape = [D]``; default: images of ``input_shape`` in ``data_range``.
        server: the server (:mod:`leakage.federated.server`) when it was malicious: an ``ImprintServer`` or
            ``TrapWeightServer`` whose ``send(global_model, input_shape)`` gave ``model``, the model the
            client trained (the ``imprint`` and ``trap_weights`` attacks read what it planted). None:
            honest-but-curious.
        known_labels: the victims' labels when the server knows them (TabLeak's setting: labels are
            public metadata), ``[B]`` for one update or ``[V, B]``: the attack uses them as they are
            (label strategy ``known``, set for you) and reports name the threat model with them.
            None: the attack recovers the labels itself (the preset's or ``labels=`` strategy).
        seed: seed of the dummies (each problem draws from its own generator; a closed form draws none).
        progress_bar: show Lightning's progress bar and start-up lines.
        trainer_options: further ``lightning.pytorch.Trainer`` arguments (not those ``invert`` sets:
            ``max_steps`` is ``steps``, ``enable_progress_bar`` is ``progress_bar``).
        **options: the attack's settings, overriding the preset's: an argument of the attack class
            (``labels="bias_count"``; for an optimisation attack its objects, ``objective=Objective(...)``,
            ``optimizer=Adam(lr=0.1)``, ``budget=Budget(...)``: :mod:`leakage.attacks.settings`), or one
            setting of those objects by its name, which changes only that setting of the preset's
            object (``tv_weight=0.01``, ``lr=0.1``, ``max_iter=5``, ``stop_relative=1e-8``;
            ``optimizer="adam"``, ``"signed_adam"`` or ``"lbfgs"`` picks the optimizer class and keeps
            its ``lr``).
    """
    chosen = preset(attack)
    if client_mode not in CLIENT_MODES:
        raise ValueError(f"unknown client_mode {client_mode!r}; choose one of {', '.join(CLIENT_MODES)}")
    for forbidden in ("model", "input_shape", "num_classes", "restarts", "init_seed"):
        if forbidden in options:
            raise ValueError(f"{forbidden!r} is an argument of invert itself, not an attack option")
    steps = chosen.steps if steps is None else steps
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1 (the images in one update), got {batch_size!r}")
    if not isinstance(update, Mapping):
        raise TypeError(f"update must be a mapping {{parameter name: tensor}} (what client_update returns), "
                        f"got {type(update).__name__}")
    trainer_settings = _trainer_settings(trainer_options)
    if server is not None and not isinstance(server, Server):
        raise TypeError(f"server must be a leakage.federated.server.Server (ImprintServer, TrapWeightServer, FishingServer, DecepticonServer), got {type(server).__name__}")
    if server is not None and server.malicious and server.model is not model:
        raise ValueError("server= is the malicious server whose send(global_model, input_shape) returned the model "
                         "the client trained: pass that model as model=")
    hardware = _accelerator(device, model)
    target = copy.deepcopy(model).cpu()
    grads = validate_gradients(dict(update), target, source="update")
    grads = {k: v.cpu() for k, v in grads.items()}
    fedavg = _fedavg_client(fedavg, batch_size)
    if server is not None and server.malicious:  # the attack targets a copy of what the server sent, as it does `model`
        server = copy.copy(server)
        server.model = target
    observation = Observation(grads, batch_size, tuple(input_shape), num_classes, tuple(data_range),
                              client_mode=client_mode, client=fedavg, kind=kind, server=server)
    cls = attack_class(chosen.attack)
    settings = apply_options(chosen.settings, options, inspect.signature(cls).parameters)
    if known_labels is not None:
        observation.labels = _known_labels(known_labels, observation.num_victims, batch_size, num_classes)
        if cls.family != "optimisation":
            raise ValueError(f"attack {attack!r} solves in closed form and reads its labels from the update: "
                             "known_labels= applies to the optimisation attacks")
        if options.get("labels", "known") != "known":
            raise ValueError(f"known_labels= gives the attack the labels, but labels={options['labels']!r} asks it to "
                             "recover them: leave labels= out (or use labels='known')")
        settings["labels"] = "known"
    elif settings.get("labels") == "known":
        raise ValueError("labels='known' needs the labels the server knows: pass known_labels=y")
    if cls.family == "optimisation":
        settings["dummies"] = settings.get("dummies", Dummies()).replace(restarts=restarts, init_seed=seed)
    elif restarts != 1:
        raise ValueError(f"attack {attack!r} solves in closed form, one solution per update: use restarts=1")
    with _quiet_lightning(progress_bar):
        try:
            module = cls(model=target, input_shape=tuple(input_shape), num_classes=num_classes, **settings)
        except TypeError as err:  # an option leakage fit does not have
            raise ValueError(f"unknown attack option: {err}") from None
        module.attach(observation)
        trainer = pl.Trainer(
            max_steps=steps, logger=False, enable_checkpointing=False, enable_model_summary=False,
            enable_progress_bar=progress_bar, num_sanity_val_steps=0, limit_val_batches=0,
            **{**hardware, **trainer_settings},
        )
        trainer.fit(module, train_dataloaders=DataLoader(_Steps(), batch_size=None))
        evaluation = module.final_evaluation()
    result = module.results(evaluation)
    best, failed = result["best"], result["failed"]
    return InversionResult(
        images=result["recon"],
        labels=result["labels"],
        matching_loss=evaluation["loss"][best].cpu(),
        grad_l2=evaluation["grad_l2"][best].cpu(),
        grad_cosine=evaluation["grad_cosine"][best].cpu(),
        best_restart=(best % restarts).cpu(),
        failed=failed.cpu(),
        module=module,
        exact=module.exact()[best.cpu()],
        entropy=None if result["entropy"] is None else result["entropy"].cpu(),
    )


def _known_labels(y: Any, victims: int, batch_size: int, num_classes: int) -> Tensor:
    """``known_labels`` as ``[V, B]`` class indices, checked against the updates and the batch size."""
    if not isinstance(y, Tensor):
        raise TypeError(f"known_labels must be a tensor of class indices ([B] or [V, B]), got {type(y).__name__}")
    labels = y.detach().cpu()
    if labels.dim() == 1:
        labels = labels[None]
    if tuple(labels.shape) != (victims, batch_size):
        raise ValueError(f"known_labels of shape {tuple(y.shape)} do not fit {victims} update(s) of batch_size "
                         f"{batch_size}: give [{batch_size}] for one update or [{victims}, {batch_size}]")
    check_labels(labels, num_classes)
    return labels.long()


@dataclass
class Report:
    """Per-update rows (the columns of ``metrics.csv``) and their summary; ``str()`` is the threat
    model (its first line), the table, the outcome and the kind's details (tables: per-feature
    accuracy and entropy, and every update's rows, true against reconstructed, wrong cells marked).

    ``metrics`` is the kind's whole evaluation (:meth:`~leakage.data.kinds.DataKind.evaluate`; tables:
    ``feature_accuracy`` ``[V, F]``, ``correct`` ``[V, B, F]``, ``entropy`` ``[V, B, F]`` in the true
    rows' order, ``perm``); ``details`` its text view."""

    rows: list[dict]
    summary: dict[str, float]
    success_ssim: float
    #: who attacked (:mod:`leakage.federated.server`): the table's first line
    threat_model: str = HONEST
    kind: Optional[DataKind] = None
    metrics: Optional[dict] = None
    details: str = ""

    def __str__(self) -> str:
        outcome = view_of(self.kind or ImageKind()).outcome(self.summary, self.success_ssim)
        return (f"threat model: {self.threat_model}\n{format_table(self.rows)}\n{outcome}"
                + (f"\n{self.details}" if self.details else ""))


def report(result: InversionResult, x: Tensor, y: Tensor, success_ssim: float = 0.9,
           data_range: Optional[float] = None) -> Report:
    """Score a reconstruction against the client's true batch with its kind's metrics, per update
    and summarised: images SSIM, PSNR, MSE (after matching the batch's images to the
    reconstructions); tables TabLeak's accuracy overall, per type and per feature, with the entropy
    of the pooled restarts (rows Hungarian-matched); and label accuracy. A victim counts as
    reconstructed when the kind's score reaches ``success_ssim``.

    ``x`` holds what the client trained on, as the model takes it: images in the data range the
    reconstruction was made for (``invert``'s ``data_range``), or table rows encoded by the schema
    (``TableSchema.encode``: one-hot categories, standardised continuous values); ``y`` class indices
    of the model. True data the kind cannot score as it is (rows of another width, raw unstandardised
    values outside the schema's encoded bounds, a categorical block that is not one-hot) is refused
    in one line, never scored: a raw value read as an encoded one would mark right reconstructions
    wrong. ``data_range`` (images): the width of the range for SSIM and PSNR; default that of
    ``invert``'s ``data_range``."""
    xb, yb, _ = _batched(x, y)
    kind = result.kind
    kind.check_truth(xb)  # the kind's own words first (a table: its width, encoding and bounds)
    if tuple(xb.shape) != tuple(result.images.shape):
        raise ValueError(f"the true {kind.records} {tuple(xb.shape)} do not fit the reconstruction "
                         f"{tuple(result.images.shape)} ([V, B, ...]: updates, batch size, one record's shape)")
    check_labels(yb, result.module.hparams.num_classes)
    if data_range is not None:
        kind = kind.with_metric_range(data_range)
    truth = xb.detach().cpu()
    metrics = kind.evaluate(result.images, truth, result.entropy)
    evaluation = {"loss": result.matching_loss, "grad_l2": result.grad_l2, "grad_cosine": result.grad_cosine}
    rows = victim_rows(result.images, result.labels, evaluation, result.best_restart, result.failed, metrics,
                       yb.cpu().long(), kind=kind)
    return Report(rows, summarize(rows, success_ssim), success_ssim, result.module.observation.threat_model, kind,
                  metrics, view_of(kind).details(result.images, truth, metrics)["text"])
