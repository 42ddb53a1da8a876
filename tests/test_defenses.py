"""Client-side defenses: each changes the shared gradient as specified, and composes in a run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from leakage.data.datamodule import VictimDataModule
from leakage.federated.defenses import (
    DPGaussian, GaussianNoise, NormClip, SecureAggregation, TopK, clip_updates, dp_epsilon, gaussian_noise,
    secure_aggregation, top_k,
)
from leakage.engine.models import build_model

from conftest import CONFIGS, assert_same_update, run_dirs


@pytest.fixture(scope="module")
def grads():
    """Real LeNet updates of 4 bundled CIFAR-10 victims: {name: [4, *shape]}."""
    model = build_model("lenet", (3, 32, 32), 10)
    return VictimDataModule(num_victims=4).prepare(model).gradients


def _flat(g):
    return torch.cat([v.flatten(1) for v in g.values()], dim=1)


def test_zero_noise_and_full_keep_ratio_change_nothing(grads):
    for out in (gaussian_noise(grads, 0.0), gaussian_noise(grads, 0.0, relative=True), top_k(grads, 1.0),
                top_k(grads, 1.0, scope="layer")):
        for k in grads:
            assert torch.equal(out[k], grads[k])


def test_absolute_noise_has_the_requested_statistics(grads):
    noise = _flat(gaussian_noise(grads, 0.5, seed=3)) - _flat(grads)
    assert noise.numel() > 60_000
    assert abs(float(noise.mean())) < 0.01
    assert float(noise.std()) == pytest.approx(0.5, rel=0.02)
    # a different seed gives different noise, the same seed the same
    assert torch.equal(_flat(gaussian_noise(grads, 0.5, seed=3)), _flat(gaussian_noise(grads, 0.5, seed=3)))
    assert not torch.equal(_flat(gaussian_noise(grads, 0.5, seed=4)), _flat(gaussian_noise(grads, 0.5, seed=3)))


def test_relative_noise_scales_with_each_layer(grads):
    out = gaussian_noise(grads, 0.1, relative=True, seed=0)
    for k, g in grads.items():
        rms = g.flatten(1).norm(dim=1) / math.sqrt(g[0].numel())
        noise = (out[k] - g).flatten(1)
        if g[0].numel() >= 1000:  # enough entries for a tight estimate
            torch.testing.assert_close(noise.std(dim=1), 0.1 * rms, rtol=0.1, atol=0)


def test_clipping_bounds_each_update_norm(grads):
    norms = _flat(grads).norm(dim=1)
    bound = float(norms.median())
    clipped = _flat(clip_updates(grads, bound)).norm(dim=1)
    assert (clipped <= bound * (1 + 1e-5)).all()
    small = norms <= bound
    torch.testing.assert_close(clipped[small], norms[small])  # updates under the bound are unchanged
    torch.testing.assert_close(clipped[~small], torch.full_like(clipped[~small], bound))


@pytest.mark.parametrize("ratio", [0.5, 0.1, 0.01, 0.0003])
def test_top_k_keeps_exactly_k_largest_entries(grads, ratio):
    flat = _flat(grads)
    out = _flat(top_k(grads, ratio))
    k = math.ceil(ratio * flat.shape[1])
    assert ((out != 0).sum(dim=1) == k).all()
    kept = out != 0
    torch.testing.assert_close(out[kept], flat[kept])  # kept entries are unchanged
    for v in range(flat.shape[0]):  # and they are the largest in magnitude
        assert float(flat[v][kept[v]].abs().min()) >= float(flat[v][~kept[v]].abs().max())


def test_top_k_per_layer_keeps_k_in_every_layer(grads):
    out = top_k(grads, 0.1, scope="layer")
    for k, g in out.items():
        n = g[0].numel()
        assert ((g.flatten(1) != 0).sum(dim=1) == math.ceil(0.1 * n)).all()


def test_secure_aggregation_masks_cancel_in_the_sum(grads):
    masked, aggregate = secure_aggregation(grads, clients=2, seed=1)
    for k, g in grads.items():
        true_mean = g.double().view(2, 2, *g.shape[1:]).mean(dim=1)
        torch.testing.assert_close(aggregate[k].double(), true_mean, rtol=0, atol=1e-6)
    # a single masked update looks nothing like its client's gradient
    m, t = _flat(masked), _flat(grads)
    cos = torch.nn.functional.cosine_similarity(m, t, dim=1)
    assert (cos.abs() < 0.05).all(), cos
    assert ((m - t).norm(dim=1) > 10 * t.norm(dim=1)).all()


def test_secure_aggregation_sum_is_exact_to_float_precision(grads):
    # the server's view: the float64 sum of masked updates equals the sum of the true updates
    from leakage.federated.defenses import pairwise_masks

    shapes = {k: g.shape[1:] for k, g in grads.items()}
    masks = pairwise_masks(4, shapes, seed=0, scale=100.0)
    for k, g in grads.items():
        total = sum(g[c].double() + masks[c][k] for c in range(4))
        torch.testing.assert_close(total, g.double().sum(0), rtol=0, atol=1e-10)


def test_dp_epsilon_comes_from_opacus_and_shrinks_with_noise():
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    for _ in range(100):
        acc.step(noise_multiplier=1.0, sample_rate=0.01)
    assert dp_epsilon(1.0, 0.01, 100, 1e-5) == pytest.approx(acc.get_epsilon(1e-5))
    assert dp_epsilon(2.0, 0.01, 100, 1e-5) < dp_epsilon(1.0, 0.01, 100, 1e-5)
    d = DPGaussian(max_norm=1.0, noise_multiplier=1.0, sample_rate=0.01, steps=100, delta=1e-5)
    assert d.describe()["epsilon"] == pytest.approx(acc.get_epsilon(1e-5))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: GaussianNoise(sigma=-0.1), "sigma"),
        (lambda: TopK(keep_ratio=0.0), "keep_ratio"),
        (lambda: TopK(keep_ratio=1.5), "keep_ratio"),
        (lambda: TopK(keep_ratio=0.5, scope="row"), "scope"),
        (lambda: NormClip(max_norm=0.0), "max_norm"),
        (lambda: SecureAggregation(clients=1), "at least 2"),
        (lambda: SecureAggregation(clients=2, target="sum"), "target"),
        (lambda: DPGaussian(max_norm=1.0, noise_multiplier=1.0, sample_rate=0.01), "all of"),
        # NaN and infinity pass a plain `x < 0` or `not x > 0` check
        (lambda: GaussianNoise(sigma=math.nan), "noise sigma must be a finite number >= 0, got nan"),
        (lambda: GaussianNoise(sigma=math.inf), "noise sigma must be a finite number >= 0, got inf"),
        (lambda: GaussianNoise(sigma=0.1, seed=1.5), "noise seed must be an integer"),
        (lambda: NormClip(max_norm=math.inf), "clipping max_norm must be a finite number > 0, got inf"),
        (lambda: NormClip(max_norm=math.nan), "clipping max_norm must be a finite number > 0, got nan"),
        (lambda: DPGaussian(max_norm=math.inf, noise_multiplier=1.0), "finite max_norm > 0"),
        (lambda: DPGaussian(max_norm=1.0, noise_multiplier=math.nan), "finite noise_multiplier >= 0"),
        (lambda: DPGaussian(max_norm=1.0, noise_multiplier=math.inf), "finite noise_multiplier >= 0"),
        (lambda: DPGaussian(max_norm=1.0, noise_multiplier=0.0, sample_rate=math.nan, steps=10, delta=1e-5),
         "0 < sample_rate <= 1"),
        (lambda: DPGaussian(max_norm=1.0, noise_multiplier=0.0, sample_rate=0.1, steps=10, delta=2.0), "0 < delta < 1"),
        (lambda: DPGaussian(max_norm=1.0, noise_multiplier=1.0, sample_rate=0.1, steps=0, delta=1e-5), "steps >= 1"),
        (lambda: TopK(keep_ratio=math.nan), "top-k keep_ratio must be in \\(0, 1\\], got nan"),
        (lambda: SecureAggregation(clients=2, mask_scale=math.nan), "mask_scale must be a finite number >= 0, got nan"),
        (lambda: SecureAggregation(clients=2, mask_scale=math.inf), "mask_scale must be a finite number >= 0, got inf"),
        (lambda: SecureAggregation(clients=2, mask_scale=-1.0), "mask_scale must be a finite number >= 0"),
        (lambda: SecureAggregation(clients=2.5), "at least 2 clients, got 2.5"),
    ],
)
def test_invalid_defense_settings_are_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_functional_core_refuses_non_finite_settings(grads):
    with pytest.raises(ValueError, match="max_norm must be a finite number > 0, got inf"):
        clip_updates(grads, math.inf)
    with pytest.raises(ValueError, match="keep_ratio must be in"):
        top_k(grads, math.nan)
    with pytest.raises(ValueError, match="mask_scale must be a finite number >= 0, got nan"):
        secure_aggregation(grads, 2, mask_scale=math.nan)
    with pytest.raises(ValueError, match="DP accounting needs"):
        dp_epsilon(1.0, math.nan, 10, 1e-5)


def test_huge_finite_noise_is_a_legal_setting():
    """sigma 1e30 is finite: the defense takes it (the attack then reports its victims failed)."""
    assert GaussianNoise(sigma=1e30).sigma == 1e30
    assert DPGaussian(max_norm=1.0, noise_multiplier=1e30).noise_multiplier == 1e30


def test_defenses_compose_in_a_cli_run(tmp_path, capsys):
    from leakage.cli import main

    cfg = tmp_path / "defense.yaml"
    cfg.write_text(
        "trainer:\n  callbacks:\n"
        "    - class_path: leakage.federated.defenses.SecureAggregation\n      init_args: {clients: 2, target: aggregate}\n"
        "    - class_path: leakage.federated.defenses.GaussianNoise\n      init_args: {sigma: 0.0}\n"
    )
    logs = tmp_path / "logs"
    main(["fit", "--config", str(CONFIGS / "cifar_dlg.yaml"), "--config", str(cfg),
          "--trainer.max_steps", "2", "--model.optimizer.max_iter", "2", "--data.num_victims", "4",
          "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(logs)])
    (run,) = run_dirs(logs)
    report = json.loads((run / "metrics.json").read_text())
    assert [d["defense"] for d in report["defenses"]] == ["secure_aggregation", "gaussian_noise"]
    # the aggregate of 2 clients is one update of 2 images: 2 victims of 2 images each
    assert len(report["victims"]) == 2
    assert report["victims"][0]["indices"] == [0, 1] and report["victims"][1]["indices"] == [2, 3]
    out = capsys.readouterr().out
    assert "defense 1: secure_aggregation" in out and "defense 2: gaussian_noise" in out


def test_secure_aggregation_aggregate_is_the_gradient_of_the_joint_batch():
    model = build_model("lenet", (3, 32, 32), 10)
    separate = VictimDataModule(num_victims=2).prepare(model).gradients
    joint = VictimDataModule(num_victims=1, batch_size=2).prepare(model).gradients
    _, aggregate = secure_aggregation(separate, clients=2)
    assert_same_update({k: aggregate[k] for k in joint}, joint)


def test_bad_defense_setting_in_a_fit_config_is_one_clear_line(tmp_path, capsys):
    from leakage.cli import main

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("trainer:\n  callbacks:\n    - class_path: leakage.federated.defenses.TopK\n      init_args: {keep_ratio: 2.0}\n")
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(CONFIGS / "cifar_fast.yaml"), "--config", str(cfg),
              "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")])
    assert exc.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("leakage: error:")]
    assert err == ["leakage: error: top-k keep_ratio must be in (0, 1], got 2.0"]


@pytest.mark.parametrize(
    "init_args, expected",
    [
        ("{sigma: .nan}", "trainer.callbacks[0].sigma must be a finite number, got nan"),
        ("{sigma: .inf}", "trainer.callbacks[0].sigma must be a finite number, got inf"),
        ("{sigma: -1.0}", "noise sigma must be a finite number >= 0, got -1.0"),
    ],
)
def test_non_finite_noise_in_a_fit_config_is_one_clear_line(tmp_path, capsys, init_args, expected):
    from leakage.cli import main

    cfg = tmp_path / "noise.yaml"
    cfg.write_text(f"trainer:\n  callbacks:\n    - class_path: leakage.federated.defenses.GaussianNoise\n      init_args: {init_args}\n")
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(CONFIGS / "cifar_fast.yaml"), "--config", str(cfg),
              "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [ln for ln in err.splitlines() if ln.startswith("leakage: error:")] == [f"leakage: error: {expected}"]
    assert run_dirs(tmp_path / "logs") == []


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--trainer.callbacks.sigma", ".nan"], "trainer.callbacks[0].sigma must be a finite number, got nan"),
        (["--trainer.callbacks.sigma", ".inf"], "trainer.callbacks[0].sigma must be a finite number, got inf"),
        (["--trainer.callbacks.sigma", "0.1", "--trainer.callbacks.seed", "1.5"],
         "trainer.callbacks: leakage.federated.defenses.GaussianNoise: seed: expected an int, got '1.5'"),
    ],
)
def test_non_finite_noise_on_the_command_line(tmp_path, capsys, args, expected):
    from leakage.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["fit", "--trainer.callbacks+=leakage.federated.defenses.GaussianNoise", *args,
              "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")])
    assert exc.value.code == 2
    assert capsys.readouterr().err == f"leakage: error: {expected}\n"
    assert run_dirs(tmp_path / "logs") == []


def test_the_cli_takes_huge_finite_noise(tmp_path):
    from leakage.attacks.gradient_inversion import GradientInversion
    from leakage.fit import TRAINER_DEFAULTS, LeakageCLI

    cli = LeakageCLI(GradientInversion, VictimDataModule, trainer_defaults=TRAINER_DEFAULTS, run=False,
                     args=["--trainer.callbacks+=leakage.federated.defenses.GaussianNoise", "--trainer.callbacks.sigma", "1e30",
                           "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)])
    (noise,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, GaussianNoise)]
    assert noise.sigma == 1e30


def _error_and_size(grads, aggregate, clients):
    """Largest error of the aggregates against the true group means, and the largest true entry."""
    true = {k: g.double().view(-1, clients, *g.shape[1:]).mean(1) for k, g in grads.items()}
    err = max(float((aggregate[k].double() - t).abs().max()) for k, t in true.items())
    return err, float(_flat(true).abs().max())


def test_secure_aggregation_refuses_masks_too_large_to_cancel_in_float32(grads):
    """mask_scale 1e20 gave an aggregate error of about the signal itself, silently; the scale the
    refusal names works, and so does the default."""
    import re

    with pytest.raises(ValueError) as exc:
        secure_aggregation(grads, clients=2, mask_scale=1e20)
    msg = str(exc.value)
    assert msg.startswith("secure aggregation mask_scale 1e+20 is too large: the masks leave an error of ")
    usable = float(re.search(r"the largest usable mask_scale for these updates is about (\S+)$", msg).group(1))
    assert 1e6 <= usable <= 1e9
    eps = torch.finfo(torch.float32).eps
    for scale in (usable, 100.0):
        _, aggregate = secure_aggregation(grads, clients=2, mask_scale=scale)
        err, size = _error_and_size(grads, aggregate, 2)
        assert err <= eps * size, (scale, err, size)  # the masks cancelled: float32 rounding of the result only
    with pytest.raises(ValueError, match="is too large"):
        secure_aggregation(grads, clients=2, mask_scale=usable * 100)


def test_secure_aggregation_mask_check_in_a_fit_is_one_clear_line(tmp_path, capsys):
    from leakage.cli import main

    cfg = tmp_path / "sa.yaml"
    cfg.write_text("trainer:\n  callbacks:\n    - class_path: leakage.federated.defenses.SecureAggregation\n"
                   "      init_args: {clients: 2, mask_scale: 1.0e+20}\n")
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(CONFIGS / "cifar_fast.yaml"), "--config", str(cfg), "--data.num_victims", "2",
              "--trainer.max_steps", "1", "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")])
    assert exc.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("leakage: error: secure aggregation mask_scale 1e+20 is too large")


def test_the_abstract_defense_is_refused_at_construction(tmp_path, capsys):
    from leakage.cli import main
    from leakage.federated.defenses import Defense

    with pytest.raises(TypeError, match="leakage.federated.defenses.Defense is an abstract defense and cannot be used itself"):
        Defense()
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(CONFIGS / "cifar_fast.yaml"), "--trainer.callbacks+=leakage.federated.defenses.Defense",
              "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")])
    assert exc.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == ["leakage: error: leakage.federated.defenses.Defense is an abstract defense and cannot be used itself (it "
                   "defines no apply): use one of GaussianNoise, NormClip, DPGaussian, TopK, SecureAggregation, Soteria, "
                   "RandomizedResponse, RRWithPrior, or a "
                   "subclass that defines apply"]
    assert run_dirs(tmp_path / "logs") == []
