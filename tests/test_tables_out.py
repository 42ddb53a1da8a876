"""What a run says about tables: true rows checked before they are scored, the user's data named, the
threat model first and about records, entropy on its two scales, and strict JSON."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
import torch

import leakage
from leakage.data.kinds import TabularKind
from leakage.data.tables import TableSchema
from leakage.engine.models import build_model

from conftest import CONFIGS, cli_args, run_dirs


def strict_json(text: str):
    """``json.loads`` that refuses ``NaN``, ``Infinity`` and ``-Infinity`` (not JSON)."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


OWN = ("colour,height,score,city,outcome\n"
       "red,1.5,3,Bern,yes\ngreen,1.9,2,Bern,no\nblue,1.6,4,Chur,no\n"
       "green,1.8,1,Basel,yes\nred,2.0,2,Bern,no\nblue,1.4,6,Basel,yes\n")


def _table(text: str = OWN):
    header, *rows = list(csv.reader(io.StringIO(text)))
    schema = TableSchema.infer(header, rows, label="outcome")
    x, y = schema.encode(header, rows)
    return schema, header, rows, x, y


def test_strict_json_refuses_nan_and_the_writer_writes_null():
    from leakage.reporting.runfiles import json_text

    with pytest.raises(ValueError, match="not JSON: NaN"):
        strict_json(json.dumps({"a": float("nan")}))
    text = json_text({"a": float("nan"), "b": [1.5, float("-inf"), torch.tensor(float("nan"))], "c": torch.tensor(2.0)})
    assert strict_json(text) == {"a": None, "b": [1.5, None, None], "c": 2.0}


def test_report_refuses_rows_not_in_the_schemas_encoding_and_stars_no_right_value():
    """The analytic inversion of one record is exact: scored against the encoded record every cell is
    right and none is starred; the same record unstandardised, or of another width, is one line."""
    schema, header, rows, x, y = _table()
    kind = TabularKind(schema)
    model = build_model("tabular_mlp", (schema.width,), len(schema.classes))
    update = leakage.client_update(model, x[:1], y[:1])
    result = leakage.invert(model, update, (schema.width,), len(schema.classes), attack="analytic", kind=kind)
    rep = leakage.report(result, x[:1], y[:1])
    assert rep.rows[0]["accuracy"] == 1.0
    text = str(rep)
    victim = text[text.index("victim 0 ("):]
    assert "*" not in victim.split("\n", 1)[1]  # no cell of the rows marked wrong
    # a closed form pools nothing: no entropy column, and the report says why
    assert "H cat" not in text and "nan" not in text and "no entropy: " in text
    assert "entropy_categorical" not in rep.rows[0]

    raw = x[:1].clone()  # the continuous columns as the client has them, not standardised
    for f, sl in schema.blocks():
        if f.type == "continuous":
            raw[0, sl.start] = float(rows[0][header.index(f.name)]) * 100
    with pytest.raises(ValueError, match=r"^the true rows are not encoded rows of the schema: height holds 150, outside "
                                         r"its encoded range .*TableSchema.encode\(header, rows\)$"):
        leakage.report(result, raw, y[:1])
    with pytest.raises(ValueError, match=rf"^the true rows have 4 columns; the schema encodes a record in {schema.width} "):
        leakage.report(result, torch.ones(1, 4), y[:1])


def test_known_labels_from_python_at_a_batch_of_records_with_entropy_on_two_scales():
    schema, header, rows, x, y = _table()
    kind = TabularKind(schema)
    model = build_model("tabular_mlp", (schema.width,), len(schema.classes))
    xb, yb = x[:3], y[:3]
    update = leakage.client_update(model, xb, yb)
    with pytest.raises(ValueError, match=r"^labels='known' needs the labels the server knows: pass known_labels=y$"):
        leakage.invert(model, update, (schema.width,), 2, kind=kind, batch_size=3, labels="known", steps=1)
    with pytest.raises(ValueError, match=r"^known_labels of shape \(2,\) do not fit 1 update\(s\) of batch_size 3"):
        leakage.invert(model, update, (schema.width,), 2, kind=kind, batch_size=3, known_labels=yb[:2], steps=1)
    result = leakage.invert(model, update, (schema.width,), 2, kind=kind, batch_size=3, known_labels=yb,
                            relax=True, distance="cosine", optimizer="signed_adam", lr=0.06, init="uniform",
                            restarts=4, ensemble="pool", steps=150, seed=0)
    assert torch.equal(result.labels[0].sort().values, yb.sort().values)
    rep = leakage.report(result, xb, yb)
    text = str(rep)
    assert text.splitlines()[0] == "threat model: honest-but-curious server; the labels are public (known to the server)"
    assert rep.rows[0]["label_acc"] == 1.0
    # entropy: categorical on [0, 1], continuous in nats, each in its own column and mean
    cat = torch.tensor([f.type == "categorical" for f in schema.features])
    ent = rep.metrics["entropy"]
    assert ((ent[..., cat] >= 0) & (ent[..., cat] <= 1 + 1e-6)).all() and torch.isfinite(ent).all()
    assert rep.rows[0]["entropy_categorical"] == pytest.approx(float(ent[..., cat].mean()), rel=1e-6)
    assert rep.rows[0]["entropy_continuous"] == pytest.approx(float(ent[..., ~cat].mean()), rel=1e-6)
    head = next(line for line in text.splitlines() if line.startswith("feature "))
    assert head.split() == ["feature", "type", "accuracy", "H", "cat", "(0-1)", "H", "cont", "(nats)"]
    assert "-0.000" not in text and "nan" not in text


def test_a_certain_categorical_feature_has_entropy_zero_not_minus_zero():
    schema, *_ , x, y = _table()
    kind = TabularKind(schema)
    same = torch.stack([x[:2]] * 3)  # three restarts that agree exactly
    _, ent = kind.combine(same)
    cat = torch.tensor([f.type == "categorical" for f in schema.features])
    assert (ent[:, cat] == 0).all() and not torch.signbit(ent[:, cat]).any()
    from leakage.data.kinds.tabular import entropy_text

    assert entropy_text(-0.0001) == "0.000" and entropy_text(float("nan")) == "" and entropy_text(-1.25) == "-1.250"


def test_a_csv_run_names_its_file_speaks_of_records_and_writes_strict_json(tmp_path, capsys):
    """A CSV of categorical features only: its continuous accuracy has nothing to measure, which
    metrics.json writes as null; the report names the file, not a default dataset."""
    from htmlpage import read_page

    path = tmp_path / "clinic_visits.csv"
    path.write_text("ward,shift,city,outcome\n" + "".join(
        f"{w},{s},{c},{o}\n" for w, s, c, o in [("a", "day", "Bern", "yes"), ("b", "night", "Chur", "no"),
                                              ("c", "day", "Basel", "no"), ("a", "night", "Bern", "yes")]))
    from leakage.cli import main

    main(cli_args(tmp_path, "--config", str(CONFIGS / "adult_tableak.yaml"), "--data.source", "CSVTable",
                  "--data.source.path", str(path), "--data.source.label_column", "outcome", "--data.batch_size", "2",
                  "--model.dummies.restarts", "2", "--trainer.max_steps", "20", "--model.budget.refine_steps", "0",
                  "--report.image_every_n_steps", "0"))
    out = capsys.readouterr().out
    (run,) = run_dirs(tmp_path)
    report = strict_json((run / "metrics.json").read_text())
    assert report["summary"]["accuracy_continuous_mean"] is None and report["victims"][0]["accuracy_continuous"] is None
    # the table's own columns, not an image's (no NaN SSIM, PSNR, MSE): metrics.csv and metrics.json alike
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header == ["victim", "indices", "true_labels", "recovered_labels", "label_acc", "accuracy",
                      "accuracy_categorical", "accuracy_continuous", "entropy_categorical", "entropy_continuous",
                      "grad_l2", "grad_cosine", "final_loss", "best_restart", "status"]
    assert list(report["victims"][0]) == header
    strict_json((run / "schema.json").read_text())
    first = "threat model: honest-but-curious server; the labels are public (known to the server)"
    assert out.split("\n\n", 1)[1].splitlines()[0] == first
    assert (run / "metrics.txt").read_text().splitlines()[0] == first
    assert "\ndata: clinic_visits.csv\n" in out
    html = (run / "report.html").read_text()
    page = read_page(run / "report.html")
    assert "clinic_visits.csv" in page.text and "cifar10" not in html and "adult" not in html.lower().replace(
        "adult_tableak", "")
    threat = html[html.index('<p class="threat">'):]
    threat = threat[:threat.index("</p>")]
    assert "private records and labels" in threat and "image" not in threat and "labels are public metadata" in threat
    assert html.index("Threat model: honest-but-curious server; the labels are public") < html.index("<h1>")
    assert not math.isnan(report["summary"]["accuracy_mean"])


def test_a_sweep_cell_reads_its_null_metrics_back_as_nan():
    from leakage.sweep.cells import _numbers

    row = _numbers(strict_json('{"score": 0.5, "accuracy_continuous": null, "error": null}'))
    assert math.isnan(row["accuracy_continuous"]) and row["error"] is None and row["score"] == 0.5
