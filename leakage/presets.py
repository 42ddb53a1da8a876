"""The attack presets by name, shared by the Python API (``leakage.invert(..., attack="dlg")``) and
the preset configs under ``configs/`` (a test keeps the two equal).

Each preset is an attack class (:data:`leakage.attacks.family.ATTACKS`), its settings (that class's
arguments: for the optimisation attack its objects, :mod:`leakage.attacks.settings`) and its step budget; the target model, the data and the number of restarts are the
caller's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from leakage.attacks.settings import LBFGS, Budget, Dummies, Objective, SignedAdam


@dataclass(frozen=True)
class Preset:
    """An attack by name: its settings, its step budget and the config file that runs it."""

    settings: dict[str, Any]
    steps: int
    config: str  # configs/<config>.yaml runs the same attack on the bundled images
    about: str = field(default="")
    attack: str = "gradient_inversion"  # the attack class, a name of leakage.attacks.family.ATTACKS


PRESETS: dict[str, Preset] = {
    "dlg": Preset(
        {"objective": Objective(distance="l2"), "optimizer": LBFGS(lr=1.0, tolerance_change=1e-7), "labels": "joint",
         "dummies": Dummies(init="uniform")}, 100, "cifar_dlg",
        "Deep Leakage from Gradients (Zhu et al., 2019): L-BFGS on the l2 gradient distance, soft labels optimized "
        "with the images, from a uniform start in the data range (configs/cifar_dlg.yaml adds 4 restarts)"),
    "idlg": Preset(
        {"objective": Objective(distance="l2"), "optimizer": LBFGS(lr=1.0), "labels": "idlg",
         "dummies": Dummies(init="randn")}, 300, "cifar_idlg",
        "iDLG (Zhao et al., 2020): the label from the last layer's gradient, then DLG's L-BFGS on the images"),
    "inverting_gradients": Preset(
        {"objective": Objective(distance="cosine", tv_weight=0.001), "optimizer": SignedAdam(lr=0.01, lr_decay=True),
         "labels": "idlg", "dummies": Dummies(init="randn", box_constraint=True)}, 4000, "cifar_cosine",
        "Inverting Gradients (Geiping et al., 2020): cosine distance + total variation, signed Adam with step decay, "
        "images kept in the data range"),
    "fast": Preset(
        {"objective": Objective(distance="l2"), "optimizer": LBFGS(lr=1.0), "labels": "idlg",
         "dummies": Dummies(init="constant"), "budget": Budget(stop_relative=1e-8, stall_steps=20, stall_improvement=0.3)},
        300, "cifar_fast",
        "the recommended fast preset: iDLG labels, L-BFGS from a constant grey start in the data range, each "
        "problem stopped once its loss has converged (1e-8 of its observation's scale) or stalls (300 steps at most)"),
    "analytic": Preset(
        {"labels": "idlg"}, 1, "mnist_analytic",
        "the analytic inversion of a fully connected first layer with a bias (Phong et al., 2018): closed form, "
        "exact for one image per update", attack="analytic"),
    "bottleneck": Preset(
        {"labels": "idlg", "iterations": 1000}, 1, "mnist_precode_adaptive",
        "the adaptive attack on PRECODE (Balunovic et al., 2022): the representation read off the variational "
        "bottleneck's encoder gradient in closed form, then L-BFGS on the layers below it; never reported exact",
        attack="bottleneck"),
    "cpa": Preset(
        {"labels": "bias_count"}, 1, "mnist_cpa",
        "the Cocktail Party Attack (Kariyappa et al., 2023): ICA unmixes a batch from a fully connected first "
        "layer's gradient, closed form", attack="cpa"),
    "imprint": Preset(
        {"labels": "bias_count"}, 1, "mnist_imprint",
        "a malicious server's imprint module (Fowl et al., 2022): every input alone in its bin read off the update "
        "in closed form; needs the server that sent it (invert's server=)", attack="imprint"),
    "trap_weights": Preset(
        {"labels": "bias_count"}, 1, "mnist_trap_weights",
        "a malicious server's trap weights in a fully connected first layer (Boenisch et al., 2023): inputs read "
        "off the rows that fired for one input only; needs the server that sent it (invert's server=)",
        attack="trap_weights"),
    "fishing": Preset(
        {"objective": Objective(distance="l2"), "optimizer": LBFGS(lr=1.0), "dummies": Dummies(init="constant"),
         "budget": Budget(stop_relative=1e-8, stall_steps=20, stall_improvement=0.3)}, 300, "mnist_fishing",
        "a malicious server's class fishing (Wen et al., 2022): the fast preset's L-BFGS on the gradient of the one "
        "input of the target class the server isolated; needs the server that sent it (invert's server=)",
        attack="fishing"),
}


def preset(name: str) -> Preset:
    """The preset called ``name``; a one-line ``ValueError`` names the choices otherwise."""
    key = name.lower().replace("-", "_")
    if key not in PRESETS:
        raise ValueError(f"unknown attack {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[key]
