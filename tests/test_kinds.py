"""The data kinds: one interface for images and tables (leakage.data.kinds)."""

from __future__ import annotations

import torch

from leakage.data.datamodule import VictimDataModule
from leakage.data.sources import BundledTable

from leakage.records import Observation
from leakage.data.kinds import ImageKind, TabularKind
from leakage.engine.seeding import generator
from leakage.reporting.views import view_of


def _adult(**kw) -> VictimDataModule:
    return VictimDataModule(BundledTable(), **kw)


def test_observation_defaults_to_the_image_kind():
    obs = Observation({"w": torch.ones(1, 3)}, 1, (1, 28, 28), 10)
    assert isinstance(obs.kind, ImageKind) and obs.kind.sample_shape == (1, 28, 28)


def test_image_kind_keeps_the_pixels_and_boxes_them():
    kind = ImageKind((1, 6, 6), (0.0, 1.0))
    x = kind.initial(2, "randn", generator("dummy", 0, 1, 0))
    assert torch.equal(kind.to_input(x), x)
    kind.project_(x)
    assert float(x.min()) >= 0 and float(x.max()) <= 1


def test_tabular_relaxation_gives_one_hot_blocks_and_bounded_values():
    kind = _adult().table.kind
    x = kind.to_input(kind.initial(4, "uniform", generator("dummy", 0, 1, 0)) * 5)
    for f, sl in kind.schema.blocks():
        if f.type == "categorical":
            assert torch.allclose(x[:, sl].sum(-1), torch.ones(4))
        else:
            lo, hi = (f.min - f.mean) / f.std, (f.max - f.mean) / f.std
            assert float(x[:, sl].min()) >= lo - 1e-5 and float(x[:, sl].max()) <= hi + 1e-5


def test_pooling_undoes_the_restarts_row_order():
    """Rows of every restart are matched to the reference by the Hungarian algorithm before pooling."""
    dm = _adult(batch_size=3)
    kind = dm.table.kind.relaxed(False)
    truth = dm.table.encode(range(3))[0]
    restarts = torch.stack([truth, truth[[2, 0, 1]], truth[[1, 2, 0]]])[None]  # [V=1, R=3, B, D]
    pooled, labels, entropy = kind.pool(restarts, torch.zeros(1, 3, 3, dtype=torch.long), torch.tensor([0]))
    assert torch.allclose(pooled[0], truth, atol=1e-6)
    metrics = kind.evaluate(pooled, truth[None], entropy)
    assert float(metrics["accuracy"][0]) == 1.0
    cat = [f.type == "categorical" for f in kind.schema.features]
    assert float(entropy[0][:, torch.tensor(cat)].abs().max()) < 1e-4  # unanimous restarts: no uncertainty


def test_tabular_accuracy_matches_rows_and_counts_the_tolerance():
    dm = _adult(batch_size=4)
    kind: TabularKind = dm.table.kind
    truth = dm.table.encode(range(4))[0]
    recon = truth[[3, 1, 0, 2]].clone()
    age = kind.schema.blocks()[0][1].start
    recon[0, age] += 0.3  # within 0.319 standard deviations: right
    recon[1, age] += 0.4  # beyond: wrong
    m = kind.evaluate(recon[None], truth[None])
    assert m["perm"][0].tolist() == [2, 1, 3, 0]
    assert float(m["feature_accuracy"][0, 0]) == 0.75
    assert abs(float(m["accuracy"][0]) - (1 - 1 / (4 * len(kind.schema.features)))) < 1e-6
    # the rows, true against reconstructed: the one wrong cell (row 1's age) and only it is marked
    shown = view_of(kind).details(recon[None], truth[None], m)
    rec = {line.split("  ")[0]: line for line in shown["text"].splitlines() if line.startswith("rec ")}
    assert [k for k, line in rec.items() if "*" in line] == ["rec 1"] and rec["rec 1"].count("*") == 1
    assert rec["rec 1"].split()[2].endswith("*")  # "rec", "1", the age cell
    assert shown["html"].count("color:#cf222e") == 1 and shown["markdown"].count("~~") == 2
