"""Shared fixtures and helpers for the leakage test suite.

Everything runs on CPU with one thread per process (on a busy 2-core machine, a second thread waits for
a busy core and costs more than it gives); every output goes under pytest's tmp_path.
"""

from __future__ import annotations

import inspect
import logging
import re
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
ASSETS = REPO / "leakage" / "assets"
#: the sample images the project was given (``../shared/data/samples``: PNGs named
#: ``{dataset}_{index}_{label}.png``), to check the bundled copies against where they are present
SAMPLES = REPO.parent / "shared" / "data" / "samples"
#: the labels of the first 20 images of the official MNIST test split (the bundled array is checked
#: against them, not read to make them)
MNIST_TEST_LABELS = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9, 0, 6, 9, 0, 1, 5, 9, 7, 3, 4]

_NAME = re.compile(r"^(?P<ds>[a-z0-9]+)_(?P<idx>\d+)_(?P<label>\d+)$")


def bundled_labels(dataset: str) -> list[int]:
    """Labels of the first 20 bundled images: CIFAR-10's read from their file names
    (``{dataset}_{index}_{label}.png``), MNIST's those of the official test split."""
    if dataset == "mnist":
        return list(MNIST_TEST_LABELS)
    files = sorted((ASSETS / dataset).glob("*.png"))
    out = {}
    for f in files:
        m = _NAME.match(f.stem)
        assert m is not None, f.name
        out[int(m["idx"])] = int(m["label"])
    return [out[i] for i in range(len(out))]


_NOISE = (
    "LightningCLI's args parameter is intended",
    "`isinstance.treespec, LeafSpec.` is deprecated",
    "Found .* module\\(s\\) in eval mode",
    "The '.*_dataloader' does not have many workers",
    "`training_step` returned `None`",
    "GPU available but not used",
    "No seed found, seed set to",
    "`max_epochs` was not set",
    "Detected pickle protocol",
    "You called `self.log\\('attack/loss'",
)


def pytest_configure(config):
    # Lightning's hints that do not apply to an attack whose "data" is one observation
    for msg in _NOISE:
        config.addinivalue_line("filterwarnings", f"ignore:{msg}")


@pytest.fixture(autouse=True)
def _quiet():
    """Keep Lightning's chatter out of the captured output (the tests read stderr)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    yield


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: these attacks run many small ops, and on a busy 2-core machine a
    second thread's synchronisation made them many times slower (measured: 70 s against 8.5 s for an
    unrolled FedAvg attack, 75.6 s against 4.9 s for a 2-cell study). Files opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cli_args(save_dir: Path, *extra: str) -> list[str]:
    """``leakage fit`` arguments that keep every output under ``save_dir`` and stay quiet."""
    return [
        "fit",
        *extra,
        "--trainer.logger.init_args.save_dir", str(save_dir),
        "--trainer.default_root_dir", str(save_dir),
        "--trainer.enable_progress_bar", "false",
    ]


def fit_in_process(save_dir, config: str, *extra: str):
    """``leakage fit --config configs/<config>`` in-process (as :func:`leakage.cli.main`, the console
    script and the sweep's cells run it), keeping the CLI object to read the reconstruction; its
    printed output is ``cli.stdout``."""
    import contextlib
    import io
    import warnings

    from leakage.attacks.gradient_inversion import GradientInversion
    from leakage.data.datamodule import VictimDataModule
    from leakage.fit import TRAINER_DEFAULTS, LeakageCLI

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()) as out:
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = LeakageCLI(GradientInversion, VictimDataModule, trainer_defaults=TRAINER_DEFAULTS,
                         save_config_kwargs={"overwrite": True},
                         parser_kwargs={"exit_on_error": False, "fit": {"exit_on_error": False}},
                         args=cli_args(save_dir, "--config", str(CONFIGS / config), *extra))
    cli.stdout = out.getvalue()
    return cli


def run_dirs(save_dir: Path) -> list[Path]:
    """Every TensorBoard run folder (``save_dir/<name>/version_N``) under ``save_dir``."""
    return sorted(p for p in save_dir.glob("*/version_*") if p.is_dir())


def assert_same_outcome(one: list[dict], two: list[dict], success_ssim: float = 0.9) -> None:
    """Two runs of the same problems compared on what is promised across processes, thread counts,
    batchings and library versions: each victim's status, labels and outcome (reconstructed at
    ``success_ssim`` or not), and SSIM to 1e-3 where reconstructed. A problem that has not converged
    follows a chaotic path: its loss, or its SSIM, after N steps is not a promised quantity and is not
    compared (issue 22: 1.5023 against 1.4618 for a victim that was not reconstructed)."""
    assert len(one) == len(two)
    for a, b in zip(one, two):
        assert b["status"] == a["status"] and b["recovered_labels"] == a["recovered_labels"]
        ssim_a, ssim_b = float(a["ssim"]), float(b["ssim"])
        assert (ssim_b >= success_ssim) == (ssim_a >= success_ssim), (ssim_a, ssim_b)
        if ssim_a >= success_ssim:
            assert ssim_b == pytest.approx(ssim_a, abs=1e-3)


def cli_error(capsys, args: list[str]) -> str:
    """Run the CLI in-process on bad input; return its one ``leakage: error:`` line."""
    from leakage.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("leakage: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="session")
def lenet_cifar():
    from leakage.engine.models import build_model

    return build_model("lenet", (3, 32, 32), 10)


@pytest.fixture(scope="session")
def lenet_mnist():
    from leakage.engine.models import build_model

    return build_model("lenet", (1, 28, 28), 10)


@pytest.fixture(scope="session")
def mlp_mnist():
    from leakage.engine.models import build_model

    return build_model("mlp", (1, 28, 28), 10)


def gradient_inversion(**options):
    """A :class:`GradientInversion` from its arguments and, by name, its objects' settings (``lr=0.5``,
    ``max_iter=5``, ``restarts=3``), as ``leakage.invert`` takes them (:func:`leakage.attacks.settings.apply_options`)."""
    from leakage.attacks.gradient_inversion import GradientInversion
    from leakage.attacks.settings import apply_options

    return GradientInversion(**apply_options({}, options, inspect.signature(GradientInversion).parameters))


def quiet_trainer(max_steps: int, callbacks=(), root: Path | None = None, logger=False):
    """A CPU Lightning Trainer for the attack, without progress bars or checkpoints."""
    import lightning.pytorch as pl

    return pl.Trainer(
        max_steps=max_steps,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        accelerator="cpu",
        callbacks=list(callbacks),
        default_root_dir=str(root) if root is not None else None,
    )


#: what float32 promises when one update is computed two ways (another batching, vmap against a plain
#: backward, another summation order, float64 as the reference): a relative error, norm-wise, of a few
#: hundred to a few thousand units of float32 rounding (2**-23 = 1.2e-7) through a small network's
#: layers. Element-wise comparisons are not promised: an entry near zero (a convolution's bias before
#: BatchNorm, whose gradient is 0 in theory) moves by far more than its own rounding.
FLOAT32_UPDATE_TOLERANCE = 1e-4


def relative_error(got, reference) -> float:
    """Norm-wise relative error of ``got`` against ``reference``: tensors, or dicts of tensors taken
    together (a whole update), in float64."""
    if isinstance(reference, dict):
        assert set(got) == set(reference), (sorted(got), sorted(reference))
        diff = sum(float((got[k].double() - reference[k].double()).pow(2).sum()) for k in reference)
        norm = sum(float(r.double().pow(2).sum()) for r in reference.values())
    else:
        diff = float((got.double() - reference.double()).pow(2).sum())
        norm = float(reference.double().pow(2).sum())
    return (diff / norm) ** 0.5 if norm > 0 else diff ** 0.5


def assert_same_update(got, reference, tolerance: float = FLOAT32_UPDATE_TOLERANCE, floor: float = 1e-2) -> None:
    """``got`` is ``reference`` to what float32 promises: the whole update norm-wise within
    ``tolerance``, and each parameter within ``tolerance`` of its own norm or, for a parameter whose
    gradient is almost nothing (below ``floor`` of the update's norm), of that floor."""
    if not isinstance(reference, dict):
        got, reference = {"": got}, {"": reference}
    assert relative_error(got, reference) <= tolerance, f"update off by {relative_error(got, reference):.2e}"
    total = sum(float(r.double().pow(2).sum()) for r in reference.values()) ** 0.5
    for k, r in reference.items():
        err = float((got[k].double() - r.double()).norm())
        bound = tolerance * max(float(r.double().norm()), floor * total)
        assert err <= bound, f"{k}: off by {err:.2e} (allowed {bound:.2e})"
