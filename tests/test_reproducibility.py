"""A problem's result depends only on itself: not on the other images of the run, their order,
the number of restarts beside it, or the chunking."""

from __future__ import annotations

import pytest
import torch

from leakage.reporting.callbacks import LeakageReport
from leakage.data.datamodule import VictimDataModule
from leakage.federated.defenses import GaussianNoise
from leakage.engine.seeding import derive_seed

from conftest import assert_same_outcome, gradient_inversion, quiet_trainer
from leakage.data.sources import Bundled


def _module(dm, **kw):
    return gradient_inversion(input_shape=dm.input_shape, num_classes=dm.num_classes, **kw)


def _dummies(indices, restarts=1, **kw):
    dm = VictimDataModule(Bundled("mnist"), indices=indices)
    module = _module(dm, model="lenet", restarts=restarts, **kw)
    module.attach(dm.prepare(module.target))
    return module


@pytest.mark.parametrize("init", ["randn", "uniform"])
def test_a_problems_start_does_not_depend_on_the_rest_of_the_run(init):
    alone = _dummies([3], init=init)
    pair = _dummies([0, 3], init=init)
    swapped = _dummies([3, 0], init=init)
    # the same random draws from the same generator: equal, not merely close
    assert torch.equal(pair.dummy_data[1], alone.dummy_data[0])
    assert torch.equal(swapped.dummy_data[0], alone.dummy_data[0])
    assert torch.equal(pair.dummy_labels[1], alone.dummy_labels[0])  # DLG's soft labels too
    assert not torch.equal(pair.dummy_data[0], pair.dummy_data[1])
    # restart 0 of a victim is the same problem whatever the number of restarts
    more = _dummies([3], restarts=3, init=init)
    assert torch.equal(more.dummy_data[0], alone.dummy_data[0])
    assert not torch.equal(more.dummy_data[1], more.dummy_data[0])
    # and the user's seed still matters
    other = _dummies([3], init=init, init_seed=1)
    assert not torch.equal(other.dummy_data[0], alone.dummy_data[0])


def test_seeds_are_stable_across_processes():
    """SHA-256 based, not Python's salted hash(): the same key in every process and on every platform."""
    assert derive_seed("dummy", 0, 123, 1) == derive_seed("dummy", 0, 123, 1)
    assert derive_seed("dummy", 0, 123, 1) != derive_seed("dummy", 0, 123, 2)
    assert derive_seed("images", 3) == 3279141440424725386  # a fixed value: changing it changes every result


def _attack(tmp_path, indices, **kw):
    dm = VictimDataModule(Bundled("mnist"), indices=indices)
    module = _module(dm, model="lenet", max_iter=5, **kw)
    report = LeakageReport(save_artifacts=False)
    quiet_trainer(4, [report], root=tmp_path).fit(module, datamodule=dm)
    return {r["indices"][0]: r for r in report.rows}, module


def test_an_images_reconstruction_does_not_depend_on_the_rest_of_the_run(tmp_path):
    """DLG (joint soft labels, randn init): image 3 alone, after image 0, and first of two. The same
    start gives the same objective (to float32 rounding: batched convolutions round differently),
    and the same outcome; a path that has not converged after 4 steps is not compared further."""
    def start_loss(indices, **kw):
        module = _dummies(indices, labels="joint", max_iter=5, **kw)
        with torch.no_grad():
            return dict(zip(indices, module.matching_loss().tolist()))

    starts = [start_loss([3]), start_loss([0, 3]), start_loss([3, 0]), start_loss([0, 3], problems_per_chunk=1)]
    for other in starts[1:]:
        assert other[3] == pytest.approx(starts[0][3], rel=1e-5)
    alone, _ = _attack(tmp_path, [3], labels="joint")
    pair, _ = _attack(tmp_path, [0, 3], labels="joint")
    swapped, _ = _attack(tmp_path, [3, 0], labels="joint")
    chunked, _ = _attack(tmp_path, [0, 3], labels="joint", problems_per_chunk=1)
    for other in (pair, swapped, chunked):
        assert_same_outcome([alone[3]], [other[3]])
    assert_same_outcome([pair[0]], [swapped[0]])


def test_defense_noise_on_an_update_does_not_depend_on_the_other_updates():
    def noisy(indices):
        dm = VictimDataModule(Bundled("mnist"), indices=indices)
        module = _module(dm, model="lenet")
        obs = dm.prepare(module.target)
        clean = {k: v.clone() for k, v in obs.gradients.items()}
        out, _ = GaussianNoise(0.1, seed=7).transform(obs, None)
        return {k: out.gradients[k] - clean[k] for k in clean}

    alone, pair = noisy([3]), noisy([0, 3])
    for k in alone:
        torch.testing.assert_close(pair[k][1], alone[k][0])
        assert not torch.allclose(pair[k][0], pair[k][1])
