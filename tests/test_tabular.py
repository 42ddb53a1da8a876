"""Tables: the Adult and CSV sources, TabLeak and its baselines, the run's table artifacts."""

from __future__ import annotations

import json

import pytest
import torch

from leakage.attacks.settings import Adam, Budget, LBFGS
from leakage.attacks.gradient_inversion import GradientInversion
from leakage.cli import main
from leakage.data.datamodule import VictimDataModule
from leakage.data.csvtable import read_csv
from leakage.data.tables import TableSchema

from conftest import CONFIGS, cli_args, cli_error, gradient_inversion, run_dirs
from leakage.data.sources import Bundled, BundledTable

pytestmark = pytest.mark.usefixtures("one_thread")


TABLEAK = dict(model="tabular_mlp", distance="cosine", optimizer="signed_adam", lr=0.06, init="uniform",
               labels="known", relax=True, ensemble="pool")


def _attack(dm: VictimDataModule, steps: int, **settings) -> tuple[GradientInversion, dict]:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from leakage.data.datamodule import _Steps

    module = gradient_inversion(input_shape=dm.input_shape, num_classes=dm.num_classes, **settings)
    module.attach(dm.prepare(module.target))
    pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_model_summary=False,
               enable_progress_bar=False, num_sanity_val_steps=0, limit_val_batches=0).fit(
        module, train_dataloaders=DataLoader(_Steps(), batch_size=None))
    result = module.results(module.final_evaluation())
    return module, module.kind.evaluate(result["recon"], dm.secret.images, result["entropy"])


def test_schema_encoding_round_trips(tmp_path):
    dm = VictimDataModule(BundledTable())
    kind, (x, _) = dm.table.kind, dm.table.encode(range(50))
    header, rows, dropped = read_csv(CONFIGS.parent / "leakage" / "assets" / "tabular" / "adult_test_0_999.csv")
    assert dropped == 73 and len(rows) == 927 and dm.input_shape == (kind.schema.width,)
    li = header.index("income")
    decoded = kind.schema.decode(x[:50])
    for got, row in zip(decoded, rows[:50]):
        assert [str(v) for v in got] == [v for i, v in enumerate(row) if i != li]
    again = TableSchema.from_json(kind.schema.to_json())
    assert torch.equal(again.encode(header, rows[:50])[0], x[:50])


def test_standardized_onehot_columns_are_tableaks_encoding(tmp_path):
    """``standardize_onehot``: the one-hot columns standardised by the records' frequencies, as
    TabLeak's model sees them; decoding, scoring, pooling and hardening undo it; TabLeak recovers a
    record through it."""
    dm = VictimDataModule(BundledTable(standardize_onehot=True), batch_size=1, public_labels=True)
    kind, (x, _) = dm.table.kind, dm.table.encode(range(len(dm.table)))
    plain_table = VictimDataModule(BundledTable()).table
    plain = (plain_table.kind, plain_table.encode(range(len(plain_table)))[0])
    cat = kind.schema.column_stats()[1] != 1  # the standardised columns (none of a constant column)
    assert cat.sum() > 70 and torch.allclose(x[:, cat].mean(0), torch.zeros(int(cat.sum())), atol=1e-5)
    assert torch.allclose(x[:, cat].std(0, unbiased=False), torch.ones(int(cat.sum())), atol=1e-4)
    assert kind.schema.decode(x[:50]) == plain[0].schema.decode(plain[1][:50])
    again = TableSchema.from_json(kind.schema.to_json())
    header, rows, _ = read_csv(CONFIGS.parent / "leakage" / "assets" / "tabular" / "adult_test_0_999.csv")
    assert again.standardized_onehot and torch.equal(again.encode(header, rows[:8])[0], x[:8])
    assert torch.equal(kind.distributions(x[:8])[:, cat].round(), plain[1][:8, cat])
    assert torch.equal(x[:, ~cat], plain[1][:, ~cat])  # the continuous columns as before
    kind.check_truth(x[None, :8])
    assert float(kind.evaluate(x[None, :8], x[None, :8])["accuracy"][0]) == 1.0
    logits = kind.distributions(x[:8]).clone() * 30  # a hard relaxed dummy: continuous entries via the sigmoid
    assert torch.allclose(kind.to_input(logits)[:, cat], x[:8, cat], atol=1e-4)
    pooled, _ = kind.combine(x[:8].repeat(3, 1, 1))
    assert torch.allclose(pooled, x[:8], atol=1e-5)
    raw = kind.relaxed(False)
    noisy = x[:8] + 0.01
    raw.harden_(noisy)
    assert torch.allclose(noisy[:, cat], x[:8, cat], atol=1e-5)
    _, m = _attack(dm, 120, restarts=3, **TABLEAK)
    assert float(m["accuracy"][0]) == 1.0, m["feature_accuracy"]
    path = tmp_path / "schema.json"
    path.write_text(plain[0].schema.to_json())
    with pytest.raises(ValueError, match="standardize_onehot is true but the schema .* encodes plain one-hot columns"):
        VictimDataModule(BundledTable(standardize_onehot=True, schema=str(path)))


# budgets about twice what each outcome needs (measured: B = 1 is 100% from 70 steps, B = 4 96% at 200)
@pytest.mark.parametrize("batch_size, steps", [(1, 120), (4, 200)])
def test_tableak_recovers_adult_records(batch_size, steps):
    dm = VictimDataModule(BundledTable(), batch_size=batch_size, public_labels=True)
    _, m = _attack(dm, steps, restarts=3, **TABLEAK)
    assert float(m["accuracy"][0]) >= 0.9, m["feature_accuracy"]


def test_low_entropy_means_high_accuracy():
    dm = VictimDataModule(BundledTable(), batch_size=8, public_labels=True)
    module, m = _attack(dm, 50, restarts=4, **TABLEAK)  # low-entropy cells 66% right, the others 25%
    cat = torch.tensor([f.type == "categorical" for f in module.kind.schema.features])
    ent, correct = m["entropy"][..., cat].flatten(), m["correct"][..., cat].flatten()
    low = ent <= ent.median()
    assert float(correct[low].mean()) > float(correct[~low].mean())


def test_tableak_beats_the_unrelaxed_cosine_baseline():
    dm = VictimDataModule(BundledTable(), batch_size=8, public_labels=True)
    _, tableak = _attack(dm, 200, restarts=3, **TABLEAK)
    dm = VictimDataModule(BundledTable(), batch_size=8, public_labels=True)
    _, baseline = _attack(dm, 200, restarts=1, **{**TABLEAK, "relax": False, "ensemble": "best",
                                                  "box_constraint": True})
    assert float(tableak["accuracy"][0]) > float(baseline["accuracy"][0])


def test_refine_steps_fix_the_categories_then_refine_the_continuous_features(tmp_path, capsys):
    """TabLeak's two-staged mode: the last steps run with every categorical feature one-hot at its
    argmax (to float32 rounding), the continuous ones still optimized."""
    dm = VictimDataModule(BundledTable(), batch_size=1, num_victims=2, public_labels=True)
    module, m = _attack(dm, 120, restarts=2, refine_steps=40, **{**TABLEAK, "ensemble": "best"})
    x = module.reconstruction()
    for sl in module.kind._cat:
        assert float(x[..., sl].max(-1).values.min()) > 1 - 1e-6
    assert m["accuracy"].tolist() == [1.0, 1.0], m["feature_accuracy"]
    with pytest.raises(ValueError, match=r"refine_steps \(40\) must be below --trainer.max_steps \(40\)"):
        _attack(dm, 40, restarts=1, refine_steps=40, **TABLEAK)
    line = cli_error(capsys, cli_args(tmp_path, "--config", str(CONFIGS / "adult_tableak.yaml"), "--trainer.max_steps", "100"))
    assert line.startswith("leakage: error: refine_steps (150) must be below --trainer.max_steps (100)"), line
    assert not run_dirs(tmp_path)  # refused before a run folder is made
    with pytest.raises(ValueError, match="refine_steps needs optimizer Adam or SignedAdam"):
        GradientInversion(model="tabular_mlp", input_shape=(8,), num_classes=2, optimizer=LBFGS(), budget=Budget(refine_steps=5))
    images = VictimDataModule(Bundled("mnist"), batch_size=1)
    attack = GradientInversion(model="mlp", input_shape=images.input_shape, num_classes=images.num_classes, optimizer=Adam(), budget=Budget(refine_steps=5))
    with pytest.raises(ValueError, match="refine_steps .* applies to tables, not to image data"):
        attack.attach(images.prepare(attack.target))


def _csv(tmp_path, text: str):
    path = tmp_path / "t.csv"
    path.write_text(text)
    return path


OWN = ("colour,height,score,city,outcome\n"
       "red,1.5,3,Bern,yes\nblue,1.7,,Basel,no\ngreen,1.9,2,Bern,no\nred,?,5,Chur,yes\n"
       "blue,1.6,4,Chur,no\ngreen,1.8,1,Basel,yes\nred,2.0,2,Bern,no\nblue,1.4,6,Basel,yes\n")


def test_own_csv_runs_from_the_cli(tmp_path, capsys):
    path = _csv(tmp_path, OWN)
    main(cli_args(tmp_path, "--config", str(CONFIGS / "adult_tableak.yaml"), "--data.source", "CSVTable",
                  "--data.source.path", str(path), "--data.source.label_column", "outcome", "--data.batch_size", "2",
                  "--model.dummies.restarts", "3", "--trainer.max_steps", "100", "--model.budget.refine_steps", "40",
                  "--report.image_every_n_steps", "0"))
    out = capsys.readouterr().out
    assert "overall accuracy" in out and "colour" in out
    (run,) = run_dirs(tmp_path)
    schema = json.loads((run / "schema.json").read_text())["schema"]
    assert [f["name"] for f in schema["features"]] == ["colour", "height", "score", "city"]
    assert [f["type"] for f in schema["features"]] == ["categorical", "continuous", "continuous", "categorical"]
    report = json.loads((run / "metrics.json").read_text())
    assert report["summary"]["accuracy_mean"] >= 0.9  # 100% from 60 steps
    # report.html: the per-feature accuracy chart, every victim's rows (truth against reconstruction,
    # with entropies), and the per-victim table with the kind's scalars (TabLeak's accuracies, not SSIM)
    from htmlpage import embedded_pngs, read_page

    from leakage.reporting.htmlreport import fmt

    page = read_page(run / "report.html")
    assert "Victim 0" in page.text and len(embedded_pngs(page)) >= 1
    assert any(r[0] == "true 0" for r in page.rows) and any(r[0] == "rec 0" and "(H " in r[2] for r in page.rows)
    header = next(r for r in page.rows if r[:2] == ["victim", "indices"])
    assert header[5:8] == ["accuracy", "categorical accuracy", "continuous accuracy"] and "SSIM" not in header
    victim = report["victims"][0]
    # labels as the table writes them, everywhere (metrics.json, metrics.txt, report.html), not class indices
    assert victim["true_labels"] == ["yes", "no"] and victim["recovered_labels"] == ["yes", "no"]
    assert " yes,no " in (run / "metrics.txt").read_text()
    assert json.loads((run / "schema.json").read_text())["schema"]["origin"] == (
        "inferred from t.csv, the attacked table itself (victims included)")
    (row,) = [r for r in page.rows if len(r) == len(header) and r[0] == "0"]
    assert row[5:8] == [fmt(victim[k]) for k in ("accuracy", "accuracy_categorical", "accuracy_continuous")]
    assert row[-1] == ("reconstructed" if victim["accuracy"] >= 0.9 else "not reconstructed")


@pytest.mark.parametrize("text, extra, message", [
    ("a,b\n1,2\n3,4\n", ["--data.source.label_column", "y"], "no label column 'y' in the table (columns: a, b)"),
    ("a,b,y\n1,2,x\nq,4,z\n", ["--data.source.label_column", "y", "--data.source.continuous_columns", "[a]"],
     "column 'a' is named continuous but holds 'q', not a number"),
    ("a,b,y\n1,2,x\nq,4,z\n", ["--data.source.label_column", "y", "--data.source.continuous_columns", "[a]",
                                "--data.source.categorical_columns", "[a]"], "column 'a' is named both categorical and continuous"),
    ("a,b,a\n1,2,x\n3,4,z\n", [], "CSV file {path}: column name 'a' appears twice in the header (columns 1 and 3)"),
    ("a,,y\n1,2,x\n3,4,z\n", [], "CSV file {path}: column 2 of the header has no name"),
    # one typo in a column of numbers is refused, not read as a category
    ("a,b,y\n" + "".join(f"{i},{i % 3},{'xz'[i % 2]}\n" for i in range(40)).replace("17,2", "1 7,2"), ["--data.source.label_column", "y"],
     "column 'a' holds numbers but also '1 7' (2.5% of the records): correct it, mark it missing ('?'), or name "
     "the column in --data.source.categorical_columns"),
])
def test_a_csv_that_does_not_fit_is_one_line(tmp_path, capsys, text, extra, message):
    path = _csv(tmp_path, text)
    line = cli_error(capsys, cli_args(tmp_path, "--config", str(CONFIGS / "adult_tableak.yaml"), "--data.source", "CSVTable",
                                      "--data.source.path", str(path), *extra))
    assert line == f"leakage: error: {message.format(path=path)}"


def test_a_category_not_in_the_schema_is_one_line(tmp_path, capsys):
    dm = VictimDataModule(BundledTable(standardize_onehot=True))  # the preset's encoding
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"schema": json.loads(dm.table.kind.schema.to_json())}))
    own = (CONFIGS.parent / "leakage" / "assets" / "tabular" / "adult_test_0_999.csv").read_text().splitlines()
    own[1] = own[1].replace("Private", "Martian")
    path = _csv(tmp_path, "\n".join(own) + "\n")
    line = cli_error(capsys, cli_args(tmp_path, "--config", str(CONFIGS / "adult_tableak.yaml"), "--data.source", "CSVTable",
                                      "--data.source.path", str(path), "--data.source.label_column", "income",
                                      "--data.source.schema", str(schema)))
    assert line == "leakage: error: t.csv, record 0: workclass 'Martian' is not a category of the schema"


def test_the_python_api_attacks_a_record_with_idlg_labels():
    import leakage
    from leakage.engine.models import build_model

    dm = VictimDataModule(BundledTable(), indices=[5])
    model = build_model("tabular_mlp", dm.input_shape, dm.num_classes)
    obs = dm.prepare(model)
    update = {k: v[0] for k, v in obs.gradients.items()}
    settings = {k: v for k, v in TABLEAK.items() if k not in ("model", "labels")}
    result = leakage.invert(model, update, dm.input_shape, dm.num_classes, attack="idlg", kind=obs.kind, steps=100,
                            restarts=3, **settings)
    assert torch.equal(result.labels, dm.secret.labels)
    assert float(obs.kind.evaluate(result.images, dm.secret.images)["accuracy"][0]) >= 0.9
    # leakage.report scores the table with the kind's metrics: accuracy, per feature, the pooled entropy
    x, y = dm.secret.images[0], dm.secret.labels[0]
    rep = leakage.report(result, x, y)
    F = len(obs.kind.schema.features)
    assert rep.rows[0]["accuracy"] == float(obs.kind.evaluate(result.images, dm.secret.images)["accuracy"][0]) >= 0.9
    assert rep.summary["accuracy_mean"] == rep.rows[0]["accuracy"] and rep.summary["success"] == 1
    assert rep.metrics["feature_accuracy"].shape == (1, F) and result.entropy.shape == (1, 1, F)
    assert rep.metrics["entropy"].shape == (1, 1, F) and torch.isfinite(rep.metrics["entropy"]).all()
    text = str(rep)
    assert "records' accuracy (TabLeak's): " in text and "SSIM" not in text
    assert "overall accuracy" in text and all(f.name in text for f in obs.kind.schema.features)
    with pytest.raises(ValueError, match="feature 'workclass' is not one-hot"):
        leakage.report(result, x * 2, y)
    with pytest.raises(ValueError, match="data_range .* applies to images, not to tabular data"):
        leakage.report(result, x, y, data_range=1.0)


def test_a_batch_size_study_on_tables_writes_its_table_with_accuracies(tmp_path):
    """`leakage sweep` on configs/adult_batch_sweep.yaml, cut to B = 1, 2 and a few steps: the cells
    and tables read the kind's headline score (TabLeak's accuracy), not SSIM."""
    import yaml

    cfg = yaml.safe_load((CONFIGS / "adult_batch_sweep.yaml").read_text())
    assert [s["name"] for s in cfg["sweep"]["studies"]] == ["tableak", "cosine", "dlg", "analytic"]
    cfg["sweep"]["studies"] = [dict(cfg["sweep"]["studies"][0], values=[1, 2])]  # TabLeak's study only
    cfg["sweep"]["output"] = str(tmp_path / "sweep")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["sweep", "--config", str(path), "--trainer.max_steps", "120", "--model.dummies.restarts", "3",
          "--report.image_every_n_steps", "0"])
    out = tmp_path / "sweep"
    for b in (1, 2):
        row = json.loads((out / "cells" / f"tableak.batch_size={b}.json").read_text())
        metrics = json.loads((out / "runs" / row["cell"] / "metrics.json").read_text())["summary"]
        assert row["status"] == "ok" and row["score_label"] == "accuracy"
        assert row["score"] == metrics["accuracy_mean"] and row["success"] == int(row["score"] >= 0.9)
        assert row["images"] == 1 and row["image_success"] == row["success"]  # one victim: its rows together
    one = json.loads((out / "cells" / "tableak.batch_size=1.json").read_text())
    assert one["score"] == 1.0  # one record at 120 steps (100% from 70)
    md = (out / "results.md").read_text()
    assert ("| B | label accuracy | mean accuracy | categorical accuracy | continuous accuracy | victims with accuracy "
            ">= 0.9 | client updates | time (s) | gradient entries per unknown |" in md), md
    assert "| 1 | 100% | 1.000 | 1.000 | 1.000 | 100% (1/1) | 1 |" in md, md
    assert "success: accuracy >= 0.9." in md and "SSIM" not in md and "PSNR" not in md and "nan" not in md
    rows = list(__import__("csv").DictReader(open(out / "results.csv")))
    assert [(r["value"], r["score_label"], float(r["score"]) == c["score"]) for r, c in zip(rows, [
        json.loads((out / "cells" / f"tableak.batch_size={b}.json").read_text()) for b in (1, 2)])] == [
        ("1", "accuracy", True), ("2", "accuracy", True)]
    assert "ssim" not in rows[0] and float(rows[0]["accuracy_categorical"]) == one["accuracy_categorical"]
    # the hparams view and report.html carry the kind's metrics too, as numbers (not nan SSIM)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "hparams" / "tableak.batch_size=1"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"hparam/accuracy", "hparam/accuracy_categorical", "hparam/accuracy_continuous"} <= tags
    assert not any("ssim" in t or "psnr" in t for t in tags) and acc.Scalars("hparam/accuracy")[-1].value == 1.0
    from htmlpage import read_page

    page = read_page(out / "report.html")
    header = next(r for r in page.rows if r[:2] == ["B", "label accuracy"])
    assert header[2:5] == ["mean accuracy", "categorical accuracy", "continuous accuracy"]
    assert next(r for r in page.rows if r[0] == "1")[2] == "1.000"
    assert "SSIM" not in " ".join(page.text) and (out / "tableak.png").stat().st_size > 0
