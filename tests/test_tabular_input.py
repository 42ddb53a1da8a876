"""Tables read right or refused in one line: CSV headers, non-finite numbers, numeric labels and
categories, schema inference and its origin, schema files checked like every input file."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch

from leakage.records import victim_rows
from leakage.data.datamodule import VictimDataModule
from leakage.data.csvtable import canonical, read_csv
from leakage.data.tables import TableSchema
from leakage.data.sources import BundledTable, CSVTable, CapturedGradients


def _table(tmp_path, text: str, name: str = "t.csv", encoding: str = "utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def _rows(n: int = 40) -> str:
    """``n`` records: a continuous ``x``, a 1-4 code ``code``, a word ``w`` and a label ``y``."""
    return "".join(f"{1.5 * i + 0.25},{1 + i % 4},{'ab'[i % 2]},{'yn'[(i // 2) % 2]}\n" for i in range(n))


KEPT = ("batch_size", "indices", "num_victims", "public_labels")  # the data module's own settings


def _dm(path, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm = VictimDataModule(CSVTable(str(path), **{k: v for k, v in kw.items() if k not in KEPT}),
                              **{k: v for k, v in kw.items() if k in KEPT})
    return dm, [str(w.message) for w in caught]


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    path = _table(tmp_path, "x,code,w,y\n" + _rows(), encoding="utf-8-sig")
    header, rows, _ = read_csv(path)
    assert header == ["x", "code", "w", "y"] and len(rows) == 40
    dm, _ = _dm(path)
    assert [f.name for f in dm.table.kind.schema.features] == ["x", "code", "w"]


@pytest.mark.parametrize("token", ["nan", "NaN", "inf", "-Infinity", "1e309"])
def test_a_non_finite_number_is_a_missing_value_and_said(tmp_path, token):
    text = "x,code,w,y\n" + _rows()
    text = text.replace("\n4.75,", f"\n{token},", 1)  # record 3's x
    dm, said = _dm(_table(tmp_path, text))
    x = dm.table.kind.schema.features[0]
    assert x.type == "continuous" and len(dm.table) == 39
    assert any(f"1 of 40 records hold a number that is not finite in x ({token!r})" in s for s in said), said
    kept = [float(r[0]) for r in dm.table.rows]
    assert x.mean == pytest.approx(sum(kept) / len(kept), rel=1e-12) and x.max == max(kept)


def test_numeric_labels_and_codes_are_one_class_per_number_shown_as_the_table_writes_them(tmp_path):
    labels = ["10", "1", "2", "1.0"] * 10
    text = "x,code,y\n" + "".join(f"{i}.5,{'3' if i % 2 else '3.0'},{lab}\n" for i, lab in enumerate(labels))
    dm, _ = _dm(_table(tmp_path, text), batch_size=4)
    schema = dm.table.kind.schema
    assert schema.classes == ["1", "2", "10"]  # by value, "1.0" is the class 1
    assert schema.features[1].categories == ["3"] and schema.features[1].type == "categorical"
    x, y = dm.table.encode(range(4))
    assert y.tolist() == [2, 0, 1, 0]
    assert dm.table.kind.label_names(y.tolist()) == ["10", "1", "2", "1"]
    with pytest.raises(ValueError, match="column 'x' holds a number that is not finite"):
        TableSchema.infer(["x", "y"], [["1", "a"], ["inf", "b"]])
    assert canonical("01") == "1" and canonical("0.50") == "0.5" and canonical("abc") == "abc"
    ev = {"loss": torch.zeros(1), "grad_l2": torch.zeros(1), "grad_cosine": torch.zeros(1)}
    rows = victim_rows(x[None], y[None], ev, torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.bool),
                       None, y[None], [[0, 1, 2, 3]], kind=dm.table.kind)
    assert rows[0]["true_labels"] == ["10", "1", "2", "1"] and rows[0]["recovered_labels"] == ["10", "1", "2", "1"]
    assert rows[0]["label_acc"] == 1.0


def test_small_integer_codes_are_categorical_and_the_settings_add_to_inference(tmp_path, caplog):
    path = _table(tmp_path, "x,code,w,y\n" + _rows())
    dm, _ = _dm(path)
    types = {f.name: f.type for f in dm.table.kind.schema.features}
    assert types == {"x": "continuous", "code": "categorical", "w": "categorical"}
    assert dm.table.kind.schema.features[1].categories == ["1", "2", "3", "4"]
    assert dm.table.kind.schema.summary == (
        "40 records, label 'y' (2 classes), 2 categorical and 1 continuous columns; read as categorical because "
        "they hold at most 10 distinct whole numbers: code (--data.source.continuous_columns to read one as continuous)")
    dm, _ = _dm(path, continuous_columns=["code"], categorical_columns=["x"])
    types = {f.name: f.type for f in dm.table.kind.schema.features}
    assert types == {"x": "categorical", "code": "continuous", "w": "categorical"}
    # a handful of records: 4 distinct whole numbers in 8 records are read as numbers
    dm, _ = _dm(_table(tmp_path, "x,code,w,y\n" + _rows(8), "small.csv"))
    assert dm.table.kind.schema.features[1].type == "continuous"


def test_the_label_column_is_the_last_unless_named(tmp_path):
    text = "income,x,code,w\n" + "".join(",".join([r.split(",")[3].strip(), *r.split(",")[:3]]) + "\n"
                                         for r in _rows().splitlines())
    dm, _ = _dm(_table(tmp_path, text), label_column="income")
    assert dm.table.kind.schema.label == "income"
    dm, _ = _dm(_table(tmp_path, text, "other.csv"))
    assert dm.table.kind.schema.label == "w"  # else the last column
    assert VictimDataModule(BundledTable()).table.kind.schema.label == "income"  # the bundled table's own


def test_the_schema_origin_is_a_named_reference_table_or_the_victims_own_with_a_warning(tmp_path):
    victims = _table(tmp_path, "x,code,w,y\n" + _rows())
    reference = _table(tmp_path, "x,code,w,y\n" + _rows(80), "reference.csv")
    dm, said = _dm(victims)
    assert dm.table.kind.schema.origin == "inferred from t.csv, the attacked table itself (victims included)"
    assert any("inferred from t.csv itself, victims included" in s for s in said)
    dm, said = _dm(victims, schema_from=str(reference))
    schema = dm.table.kind.schema
    assert schema.origin == f"reference table {reference}" and not any("victims included" in s for s in said)
    assert schema.features[0].max == 1.5 * 79 + 0.25  # the reference's bounds, not the victims'
    assert dm.table.kind.describe()["schema"]["origin"] == schema.origin  # what the run's schema.json records
    saved = tmp_path / "schema.json"
    saved.write_text(json.dumps(dm.table.kind.describe()))
    dm, said = _dm(victims, schema=str(saved))
    assert dm.table.kind.schema.features == schema.features
    assert dm.table.kind.schema.origin == f"schema file {saved} (reference table {reference})"
    with pytest.raises(ValueError, match="give the table's schema one way"):
        _dm(victims, schema=str(saved), schema_from=str(reference))
    with pytest.raises(ValueError, match="a schema fixes every column's type"):
        _dm(victims, schema=str(saved), categorical_columns=["x"])
    with pytest.raises(ValueError, match="--data.source.label_column w differs from the schema's label column 'y'"):
        _dm(victims, schema=str(saved), label_column="w")
    # a captured update of a table: the schema from the reference alone
    dm = VictimDataModule(CapturedGradients(dataset="credit", gradient_file="u.safetensors", schema_from=str(reference)))
    assert dm.table.kind.schema.origin == f"reference table {reference}" and dm.input_shape == (7,)


def test_a_bad_schema_file_is_one_line_from_the_cli(tmp_path, capsys):
    from conftest import CONFIGS, cli_args, cli_error

    victims = _table(tmp_path, "x,code,w,y\n" + _rows())
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(_schema(x={"std": 0})))
    args = ["--config", str(CONFIGS / "adult_tableak.yaml"), "--data.source", "CSVTable", "--data.source.path", str(victims)]
    line = cli_error(capsys, cli_args(tmp_path, *args, "--data.source.schema", str(path)))
    assert line == f"leakage: error: cannot read the table schema {path}: schema feature 'x': std 0 must be > 0"
    line = cli_error(capsys, cli_args(tmp_path, *args, "--data.source.schema", str(tmp_path / "none.json")))
    assert line == f"leakage: error: schema file not found: {tmp_path / 'none.json'}"


def _schema(**changes) -> dict:
    base = {"label": "y", "classes": ["n", "y"], "features": [
        {"name": "x", "type": "continuous", "mean": 1.0, "std": 2.0, "min": 0.0, "max": 3.0},
        {"name": "w", "type": "categorical", "categories": ["a", "b"]}]}
    for key, value in changes.items():
        if key in ("x", "w"):
            base["features"][0 if key == "x" else 1].update(value)
        else:
            base[key] = value
    return base


@pytest.mark.parametrize("schema, message", [
    (_schema(x={"std": 0}), "schema feature 'x': std 0 must be > 0"),
    (_schema(x={"min": 5.0}), "schema feature 'x': min 5.0 > max 3.0"),
    (_schema(x={"mean": float("nan")}), "schema feature 'x': mean nan is not a finite number"),
    (_schema(x={"max": 1e309}), "schema feature 'x': max inf is not a finite number"),
    (_schema(w={"type": "weird"}), "schema feature 'w': type 'weird' is neither categorical nor continuous"),
    (_schema(w={"categories": []}), "schema feature 'w': categories must be a non-empty list of distinct strings"),
    (_schema(w={"onehot_mean": [0.5], "onehot_std": [0.5]}),
     "schema feature 'w': onehot_mean and onehot_std need one entry per category"),
    (_schema(features=[]), "the schema has no features (features: a non-empty list)"),
    (_schema(classes=["y"]), "the schema's classes must be two or more distinct strings"),
    (_schema(w={"colour": 1}), "schema feature 1: unknown entry 'colour'"),
    ([1, 2], "a schema is a JSON object with label, classes and features"),
])
def test_a_schema_file_that_cannot_be_right_is_one_line(tmp_path, schema, message):
    victims = _table(tmp_path, "x,w,y\n0.5,a,y\n1.5,b,n\n")
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    with pytest.raises(ValueError) as err:
        VictimDataModule(CSVTable(path=str(victims), schema=str(path)))
    assert str(err.value) == f"cannot read the table schema {path}: {message}"
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_schema()))
    dm = VictimDataModule(CSVTable(path=str(victims), schema=str(good)))  # the same file, right, is read
    assert dm.input_shape == (3,) and dm.table.encode([0])[0].tolist() == [[-0.25, 1.0, 0.0]]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_schema_file_that_is_no_regular_file_is_refused_unread(tmp_path, monkeypatch):
    victims = _table(tmp_path, "x,w,y\n0.5,a,y\n1.5,b,n\n")
    fifo, zero = tmp_path / "fifo.json", tmp_path / "zero.json"
    os.mkfifo(fifo)
    zero.symlink_to("/dev/zero")
    with pytest.raises(ValueError, match=r"is a FIFO \(named pipe\), not a regular file"):
        VictimDataModule(CSVTable(path=str(victims), schema=str(fifo)))
    with pytest.raises(ValueError, match=r"\(a link to /dev/zero\) is a character device, not a regular file"):
        VictimDataModule(CSVTable(path=str(victims), schema=str(zero)))
    big = tmp_path / "big.json"
    big.write_text(json.dumps(_schema()))
    monkeypatch.setattr("leakage.data.tables.SCHEMA_BYTES", 64)
    with pytest.raises(ValueError, match=r"big.json: larger than 64 bytes"):
        VictimDataModule(CSVTable(path=str(victims), schema=str(big)))
    with pytest.raises(ValueError, match=r"CSV file .*fifo.json is a FIFO"):
        read_csv(fifo)


def test_only_the_attacked_records_are_encoded(tmp_path):
    """A table of many categories is held as read; the victims' rows alone are encoded densely."""
    text = "id,x,y\n" + "".join(f"c{i},{i % 7}.5,{'yn'[i % 2]}\n" for i in range(3000))
    dm, _ = _dm(_table(tmp_path, text), batch_size=2, indices=[2998, 5])
    assert dm.input_shape == (3001,)
    secret = dm.load_victims()
    assert secret.images.shape == (1, 2, 3001)
    cats = dm.table.kind.schema.features[0].categories
    assert secret.images[0, 0, cats.index("c2998")] == 1 and secret.images[0, 1, cats.index("c5")] == 1
    assert not any(isinstance(v, torch.Tensor) and v.numel() > 3001 * 2 for v in vars(dm.table).values())
