"""The Cocktail Party Attack (Kariyappa et al., ICML 2023): unmix a batch from a fully connected first
layer's gradient with independent component analysis.

For a first layer ``z = W x + b`` fed the flattened input, a batch's gradient is
``dL/dW = sum_n delta_n x_n^T / B = A X`` and ``dL/db = A 1``: the ``H`` rows of ``dL/dW`` are ``H``
mixtures of the ``B`` records (the "speakers"), mixed by the unknown ``A = [delta_1 .. delta_B] / B``.
The attack, per update:

1. **Shift** to the data range's lower end: ``dL/dW - lo dL/db 1^T = A (X - lo)``, exactly (the bias
   gradient is ``A 1``), so the sources are ``x_n - lo >= 0``.
2. **ICA**: scikit-learn's FastICA (logcosh contrast, whitened to ``B`` components, seeded by the
   update's key) gives an unmixing ``U`` ``[B, H]``; ``U dL/dW`` (not centred) holds one signed,
   scaled copy of each record, as far as the records are independent.
3. **Sign and prior** (the paper's negative-value and sparsity priors, as a projection): each
   component's sign is the one with more positive mass; then ``refine_steps`` alternating projections
   between the non-negative, sparse images (values below ``sparsity`` times the image's maximum set
   to 0, the rest lowered by it) and the span of the mixtures pull each component onto one record.
   Records in a batch are correlated (digits share strokes), which ICA's whitening cannot undo; the
   projections do most of the separating on sparse images such as MNIST. A component that ends on a
   record another one already holds is restarted from its ICA component with the records found so
   far projected out (up to 5 rounds).
4. **Scale** from the bias gradient: with the mixing ``M`` fitted by least squares (``A (X - lo) = M S``),
   ``dL/db = A 1 = M c`` gives each component's scale ``c`` (sign included), and ``x = S / c + lo``.

The recovered records come in ICA's order; the metrics assign them to the true ones by the Hungarian
algorithm (:func:`leakage.engine.metrics.match_batch`). Reported exact only where the certificate of
:mod:`leakage.attacks.closedform` holds (the unmixed batch reproduces the whole update): in practice never, as
a mixture is unmixed up to the records' dependence. Needs ``B`` from 2 to the first layer's width and the number of input features. FedSGD and
FedAvg alike (a FedAvg update's first layer is still ``A' X`` and its bias ``A' 1``); a defense that
breaks the linear structure (noise, top-k) degrades it. Labels: a batch restoration
(:mod:`leakage.attacks.labels`). Only the observation is read.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from leakage.attacks.analytic import LABELS
from leakage.attacks.closedform import ClosedFormAttack
from leakage.records import Observation
from leakage.engine.models import first_linear
from leakage.engine.seeding import derive_seed

#: a refined component this close (cosine) to an earlier one holds the same record: it is restarted
DUPLICATE_COSINE = 0.95
RESTART_ROUNDS = 5


def _signed(S: Tensor) -> Tensor:
    """Each row with the sign that gives it more positive than negative mass."""
    return S * torch.where(S.clamp(min=0).sum(1) >= (-S).clamp(min=0).sum(1), 1.0, -1.0).to(S)[:, None]


def _project(S: Tensor, basis: Tensor, sparsity: float, steps: int) -> Tensor:
    """``steps`` alternating projections of the rows of ``S`` between the non-negative images with
    values below ``sparsity * max`` shrunk to 0 and the row space spanned by ``basis`` (orthonormal rows)."""
    for _ in range(steps):
        S = ((S - sparsity * S.amax(1, keepdim=True)).clamp(min=0) @ basis.T) @ basis
    return S


def unmix(mixture: Tensor, bias: Tensor, batch_size: int, sparsity: float = 0.01, refine_steps: int = 1000,
          ica_iterations: int = 500, seed: int = 0) -> Tensor:
    """The ``B`` non-negative sources ``[B, D]`` of ``mixture = A X`` ``[H, D]`` with ``bias = A 1`` ``[H]``
    (steps 2-4 of the module docstring), in float64."""
    from sklearn.decomposition import FastICA  # imported on use: the other attacks do without it

    B = batch_size
    Y = mixture.double()
    with warnings.catch_warnings():  # a slow convergence is reported by the residual, not a warning
        warnings.simplefilter("ignore")
        ica = FastICA(B, whiten="unit-variance", fun="logcosh", max_iter=ica_iterations, random_state=seed)
        ica.fit(Y.T.cpu().numpy())
    ica_sources = _signed(torch.from_numpy(ica.components_).to(Y) @ Y)  # not centred: copies of x_n
    basis = torch.linalg.svd(Y, full_matrices=False)[2][:B]  # the span of the records
    S = _project(ica_sources, basis, sparsity, refine_steps)
    for _ in range(RESTART_ROUNDS if refine_steps else 0):
        unit = nn.functional.normalize(S, dim=1)
        again = ((unit @ unit.T).triu(1) > DUPLICATE_COSINE).any(0)  # holds an earlier row's record
        if not again.any():
            break
        found = torch.linalg.qr(unit[~again].T)[0]  # [D, k]
        seeds = ica_sources[again] - (ica_sources[again] @ found) @ found.T
        S[again] = _project(_signed(seeds), basis, sparsity, refine_steps)
    mixing = torch.linalg.lstsq(S.T, Y.T).solution.T  # Y = M S, [H, B]
    scale = torch.linalg.lstsq(mixing, bias.double()[:, None]).solution[:, 0]  # bias = A 1 = M c
    return S / scale[:, None]


class CocktailPartyAttack(ClosedFormAttack):
    """Unmix a batch from its fully connected first layer's gradient with ICA (see :mod:`leakage.attacks.cpa`).

    Args:
        model: target model whose first parametrised layer is an ``nn.Linear`` with a bias fed the
            flattened input: the built-in ``mlp``, ``tabular_mlp``, or any ``torch.nn.Module`` given by
            import path. Other models are refused in one line, as is a batch larger than that layer's
            width (ICA separates at most as many sources as there are mixtures).
        input_shape: linked from the data by the CLI.
        num_classes: linked from the data by the CLI.
        model_seed: seed of a built-in model's weights.
        model_weights: optional weights file (``.pt``/``.pth``, ``.ckpt``, ``.safetensors``), read
            without unpickling.
        labels: a batch label restoration (``bias_count``, ``weight_count``, ``yin``, ``ilrg``; see
            :mod:`leakage.attacks.labels`) or ``idlg`` for one record per update.
        sparsity: the prior's threshold, a fraction of each image's maximum below which it is
            background (the data range's lower end); in [0, 1). 0 keeps only non-negativity.
        refine_steps: alternating projections after ICA (0: ICA alone, sign and scale fixed).
        ica_iterations: FastICA's iteration limit.
    """

    def __init__(
        self,
        model: Union[nn.Module, str] = "mlp",
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        model_seed: int = 1234,
        model_weights: Optional[str] = None,
        labels: Literal["bias_count", "weight_count", "yin", "ilrg", "idlg"] = "bias_count",
        sparsity: float = 0.01,
        refine_steps: int = 1000,
        ica_iterations: int = 500,
    ) -> None:
        super().__init__()
        if labels not in LABELS:
            raise ValueError(f"unknown label strategy {labels!r}; choose one of {', '.join(LABELS)}")
        if not 0 <= sparsity < 1:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        for name, value, least in (("refine_steps", refine_steps, 0), ("ica_iterations", ica_iterations, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        self._settings_and_target(model, input_shape, num_classes, model_seed, model_weights)
        self.layer_name, layer = first_linear(self.target, input_shape, f"model {self.hparams.model!r}",
                                              attack="the Cocktail Party Attack")
        self.width = layer.out_features

    def receive(self, model: nn.Module) -> None:
        super().receive(model)  # a malicious server's model: unmix its own first layer
        self.layer_name, layer = first_linear(self.target, self.hparams.input_shape, "the model the server sent",
                                              attack="the Cocktail Party Attack")
        self.width = layer.out_features

    def check_observation(self, observation: Observation) -> None:
        super().check_observation(observation)
        B, D = observation.batch_size, math.prod(observation.input_shape)
        if B == 1:
            raise ValueError("the Cocktail Party Attack unmixes a batch of 2 records or more; for one record per "
                             "update use --attack analytic, which inverts it exactly")
        sent = observation.server.model if observation.server is not None else None
        name, layer = ((self.layer_name, None) if sent is None else
                       first_linear(sent, self.hparams.input_shape, "the model the server sent",
                                    attack="the Cocktail Party Attack"))
        width = self.width if layer is None else layer.out_features
        if B > min(width, D):
            what = (f"its first layer {name!r} has {width} units" if B > width
                    else f"the input has {D} features")
            raise ValueError(f"the Cocktail Party Attack unmixes at most as many records as {what}, "
                             f"the batch has {B}: use a smaller batch or a wider first layer")

    def solve(self, observation: Observation) -> tuple[Tensor, Tensor, Tensor]:
        V, B = observation.num_victims, observation.batch_size
        lo = float(observation.data_range[0])
        hp = self.hparams
        dW = observation.gradients[f"{self.layer_name}.weight"]  # [V, H, D]
        db = observation.gradients[f"{self.layer_name}.bias"]  # [V, H]
        D = math.prod(observation.input_shape)
        hi = float(observation.data_range[1])
        x = torch.full((V, B, D), (lo + hi) / 2, dtype=torch.float64)  # filler where nothing is unmixed (failed)
        for v in range(V):
            mixture = dW[v].double() - lo * db[v].double()[:, None]
            rank = int(torch.linalg.matrix_rank(mixture)) if torch.isfinite(mixture).all() else -1
            if rank < B:  # nothing to unmix: a failed result, said in one line, not an ICA error
                self.unread[v] = True
                why = ("is not finite" if rank < 0 else "is zero (no unit of the layer passed a gradient)" if rank == 0
                       else f"has rank {rank}, fewer than the batch's {B} records")
                self.notes.append(f"victim {v} failed: the Cocktail Party Attack needs the gradient of the first layer "
                                  f"{self.layer_name!r} to mix {B} records, and it {why}")
                continue
            try:
                x[v] = unmix(mixture, db[v], B, hp.sparsity, hp.refine_steps, hp.ica_iterations,
                             seed=derive_seed("cpa", observation.update_keys[v]) % 2**32) + lo
            except (ValueError, RuntimeError) as err:  # scikit-learn / LAPACK on a degenerate mixture
                from leakage.engine.errors import one_line

                self.unread[v] = True
                self.notes.append(f"victim {v} failed: the Cocktail Party Attack could not unmix its first layer's "
                                  f"gradient ({one_line(err)})")
        labels = self.restored_labels(observation)
        x = x.float().view(V, B, *observation.input_shape)
        return x, labels, ~self.unread  # every slot unmixed: the certificate decides

    def describe(self) -> str:
        return "Cocktail Party Attack: ICA on the first layer's gradient (closed form)"
