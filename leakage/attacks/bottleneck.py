"""The adaptive attack on PRECODE (Balunovic et al., "Bayesian Framework for Gradient Leakage", ICLR 2022):
read the representation off the bottleneck's encoder, then invert the layers below it.

PRECODE (:mod:`leakage.engine.precode`) hides the update behind the client's private noise ``eps``: the
layers after the sampling, and through the backward pass every layer, depend on it. Its encoder does
not hide its own input: it is a fully connected layer ``h = W r + b`` fed the representation ``r``, so
for one image ``dL/dW = delta r^T`` and ``dL/db = delta`` (whatever ``delta`` the noise made), and every row
with ``dL/db_i != 0`` holds ``r = dL/dW_i / dL/db_i``. Two steps:

1. **The representation**, by least squares over the rows (as :mod:`leakage.attacks.analytic` does for a
   first layer): ``r = sum_i db_i dW_i / sum_i db_i^2``; exact to float32 rounding for one image, which the
   update shows: the encoder's gradient is then rank one, ``|dW - db r^T| <= 1e-4 |dW|``.
2. **The input**, from the representation: when the encoder is fed the flattened input itself, ``r`` is
   the input. Otherwise the input is searched so that the layers below the encoder give ``r``: L-BFGS on
   ``|f(x) - r|^2 / |r|^2`` over ``x = lo + (hi - lo) sigmoid(u)`` (inside the data range), from the middle of
   the range. Only the layers below the bottleneck run; the noise plays no part.

**Exact only where proven.** The noise makes the whole update irreproducible for the attacker, so the
closed form's certificate (:mod:`leakage.attacks.closedform`) never holds and nothing is reported exact;
the notes state whether the representation came back exactly (rank one) and how closely the found input
gives it. A batch of several images gives a mixture of their representations (not exact). Built for
FedSGD: under FedAvg the layers below move between local steps, the encoder's update is no longer rank
one (the notes say so) and the search matches a pseudo-gradient (measured: one MNIST image, 2 local
steps of lr 0.1, 100 iterations: SSIM 0.25).

Labels: iDLG from the classifier's gradient for one image (its sign survives the noise), or a batch
restoration (:mod:`leakage.attacks.labels`). The attack reads only the observation.
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.func import functional_call

from leakage.attacks.analytic import LABELS, RANK_ONE_TOLERANCE
from leakage.attacks.closedform import ClosedFormAttack
from leakage.engine.precode import VariationalBottleneck
from leakage.federated.client import client_view
from leakage.records import Observation


class _Stop(Exception):
    """Raised by the hook on the encoder once its input is seen: nothing after it runs."""


def bottleneck_encoder(model: nn.Module, layer: Optional[str] = None) -> str:
    """The name of the encoder to read: ``layer`` (an ``nn.Linear`` with a bias of ``model``), or the encoder
    of the model's first :class:`~leakage.engine.precode.VariationalBottleneck`; a one-line ``ValueError`` otherwise."""
    if layer is None:
        found = next((n for n, m in model.named_modules() if isinstance(m, VariationalBottleneck)), None)
        if found is None:
            raise ValueError("the bottleneck attack needs a PRECODE model (a VariationalBottleneck: lenet_precode, "
                             "mlp_precode) or the encoder's name: --model.layer NAME")
        return f"{found}.encoder" if found else "encoder"
    linear = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.bias is not None}
    if layer not in linear:
        raise ValueError(f"bottleneck layer {layer!r} is not an nn.Linear with a bias of the model; its linear "
                         f"layers with a bias: {', '.join(linear) or 'none'}")
    return layer


def representation(net, layer: str, x: Tensor, module: Optional[nn.Module] = None) -> Tensor:
    """The input of ``layer`` ``[N, F]`` when ``net`` (a module, or a function running ``module``) runs on ``x``
    ``[N, *input_shape]``; the layers after it do not run."""
    seen: list[Tensor] = []

    def stop(module: nn.Module, inputs: tuple) -> None:
        seen.append(inputs[0])
        raise _Stop

    hook = (module or net).get_submodule(layer).register_forward_pre_hook(stop)
    try:
        net(x)
    except _Stop:
        pass
    finally:
        hook.remove()
    if not seen:
        raise ValueError(f"the bottleneck layer {layer!r} is not run by the model's forward pass")
    return seen[0].flatten(1)


class BottleneckInversion(ClosedFormAttack):
    """Balunovic et al.'s adaptive attack on PRECODE: the representation read off the bottleneck's encoder
    gradient in closed form, then the input that the layers below give it (see :mod:`leakage.attacks.bottleneck`).

    Args:
        model: the target model (``lenet_precode``, ``mlp_precode``, or any ``nn.Module`` by import path).
        input_shape: linked from the data by the CLI.
        num_classes: linked from the data by the CLI.
        model_seed: seed of a built-in model's weights.
        model_weights: optional weights file, read without unpickling.
        labels: ``idlg`` (one image) or a batch label restoration (``bias_count``, ``weight_count``, ``yin``, ``ilrg``).
        layer: the encoder's name (an ``nn.Linear`` with a bias fed the representation); None: the encoder
            of the model's first ``VariationalBottleneck``.
        iterations: L-BFGS iterations of the input search (step 2), at least 1 (it stops earlier once converged).
        min_relative_bias: encoder rows whose bias gradient is at least this fraction of the largest one
            are combined (least squares, weighted by the bias gradient); in [0, 1).
    """

    def __init__(
        self,
        model: Union[nn.Module, str] = "lenet_precode",
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        model_seed: int = 1234,
        model_weights: Optional[str] = None,
        labels: Literal["idlg", "bias_count", "weight_count", "yin", "ilrg"] = "idlg",
        layer: Optional[str] = None,
        iterations: int = 1000,
        min_relative_bias: float = 1e-3,
    ) -> None:
        super().__init__()
        if labels not in LABELS:
            raise ValueError(f"unknown label strategy {labels!r}; choose one of {', '.join(LABELS)}")
        if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
            raise ValueError(f"bottleneck iterations must be an integer >= 1 (L-BFGS iterations), got {iterations!r}")
        if not (isinstance(min_relative_bias, (int, float)) and 0 <= min_relative_bias < 1):
            raise ValueError(f"min_relative_bias must be in [0, 1), got {min_relative_bias!r}")
        self._settings_and_target(model, input_shape, num_classes, model_seed, model_weights)
        self.layer_name = bottleneck_encoder(self.target, layer)
        #: each victim's relative rank-one residual of the encoder's gradient ``[V]`` (the representation
        #: is exact where it is at most 1e-4) and the relative distance of the found input's representation
        self.representation_residual: Optional[Tensor] = None
        self.feature_distance: Optional[Tensor] = None

    def solve(self, observation: Observation) -> tuple[Tensor, Tensor, Tensor]:
        V, B, shape = observation.num_victims, observation.batch_size, tuple(observation.input_shape)
        dW = observation.gradients[f"{self.layer_name}.weight"].to(self.device).flatten(2)  # [V, H, F]
        db = observation.gradients[f"{self.layer_name}.bias"].to(self.device)  # [V, H]
        size = db.abs()
        weight = torch.where(size >= self.hparams.min_relative_bias * size.amax(dim=1, keepdim=True), db, 0.0)
        r = torch.bmm(weight[:, None, :], dW)[:, 0] / (weight * db).sum(dim=1, keepdim=True)  # [V, F]; 0/0: NaN
        rank_one = torch.linalg.vector_norm(torch.baddbmm(dW, db[..., None], r[:, None, :], alpha=-1), dim=(1, 2))
        self.representation_residual = (rank_one / torch.linalg.vector_norm(dW, dim=(1, 2))).cpu()
        net = client_view(self.target.to(self.device), observation.client_mode)
        if r.shape[1] == math.prod(shape) and self._fed_the_input(net, shape):
            x = r.view(V, *shape)
        else:
            x = self._search(net, r, shape, observation)
        self.feature_distance = self._distance(net, x, r).cpu()
        exact_r = int((self.representation_residual <= RANK_ONE_TOLERANCE).sum()) if B == 1 else 0
        worst = float(self.feature_distance.nan_to_num(float("inf")).max())
        self.notes.append(f"bottleneck: the representation read exactly (rank one) for {exact_r} of {V} updates; the "
                          f"input's representation within {worst:.2g} (relative, worst update); the noise leaves no "
                          "image provably exact")
        labels = self.restored_labels(observation)
        x = x.view(V, 1, *shape).expand(V, B, *shape).contiguous()
        return x, labels, torch.zeros(V, dtype=torch.bool)

    def _fed_the_input(self, net: nn.Module, shape: tuple) -> bool:
        """Whether the encoder's input is the flattened model input (checked on a probe)."""
        probe = torch.rand((2, *shape), generator=torch.Generator().manual_seed(0)).to(self.device)
        return torch.equal(representation(net, self.layer_name, probe), probe.flatten(1))

    def _distance(self, net: nn.Module, x: Tensor, r: Tensor) -> Tensor:
        return torch.linalg.vector_norm(representation(net, self.layer_name, x) - r, dim=1) \
            / torch.linalg.vector_norm(r, dim=1)

    def _search(self, net: nn.Module, r: Tensor, shape: tuple, observation: Observation) -> Tensor:
        """The inputs ``[V, *shape]`` whose representations are closest to ``r`` ``[V, F]`` and whose layers below
        the encoder have the observed gradients (L-BFGS per update, inside the data range)."""
        lo, hi = (float(v) for v in observation.data_range)
        encoder = self.target.get_submodule(self.layer_name)
        bias = observation.gradients[f"{self.layer_name}.bias"].to(self.device)
        upstream = bias @ encoder.weight.flatten(1)  # dL/dr = W^T delta, delta = dL/db: [V, F], noise-free
        params = {n: p.detach().requires_grad_() for n, p in self.target.named_parameters()}
        probe = torch.full((1, *shape), (lo + hi) / 2, device=r.device)
        with torch.enable_grad():  # the parameters below the encoder: those its input depends on
            f = representation(lambda t: functional_call(net, params, (t,)), self.layer_name, probe, net)
            used = torch.autograd.grad(f.sum(), list(params.values()), allow_unused=True)
        below = [n for n, g in zip(params, used) if g is not None]
        out = torch.full((r.shape[0], *shape), float("nan"), device=r.device)
        for v in range(r.shape[0]):
            if not torch.isfinite(r[v]).all():
                continue
            observed = [observation.gradients[n][v].to(self.device) for n in below]
            g_scale = sum(float(g.square().sum()) for g in observed) or 1.0
            r_scale = float(r[v].square().sum()) or 1.0
            u = torch.zeros((1, *shape), device=r.device, requires_grad=True)
            optimizer = torch.optim.LBFGS([u], lr=1, max_iter=self.hparams.iterations, history_size=100,
                                          tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe")

            def closure(v=v, u=u, optimizer=optimizer, observed=observed, g_scale=g_scale, r_scale=r_scale) -> Tensor:
                optimizer.zero_grad()
                x = lo + (hi - lo) * torch.sigmoid(u)
                f = representation(lambda t: functional_call(net, params, (t,)), self.layer_name, x, net)
                mine = torch.autograd.grad(f, [params[n] for n in below], upstream[v][None], create_graph=True)
                loss = (f[0] - r[v]).square().sum() / r_scale \
                    + sum((a - b).square().sum() for a, b in zip(mine, observed)) / g_scale
                loss.backward()
                return loss

            with torch.enable_grad():
                optimizer.step(closure)
            out[v] = (lo + (hi - lo) * torch.sigmoid(u)).detach()[0]
        return out

    def describe(self) -> str:
        return "bottleneck inversion (PRECODE's encoder read in closed form, the layers below inverted)"
