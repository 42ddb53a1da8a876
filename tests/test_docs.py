"""The documentation's commands and examples run as written; the site builds strictly.

The examples of "Attack your own model" (docs/own-model.md) and "Tabular data" (docs/tables.md) run
as written and their output is checked.
"""

from __future__ import annotations

import csv
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _section(title: str, page: str) -> str:
    text = (ROOT / "docs" / page).read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def _blocks(section: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section, re.S)


def test_the_python_example_reconstructs_the_image(capsys):
    (code,) = _blocks(_section("Attack your own model", "own-model.md"), "python")
    exec(compile(code, "docs/own-model.md", "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out
    assert "reconstructed (SSIM >= 0.9): 1/1" in out
    assert out.splitlines()[0] == "threat model: honest-but-curious server"
    row = out.splitlines()[2].split()
    assert row[1] == row[2] == "7" and float(row[3]) >= 0.9  # true and recovered label, SSIM


def test_the_cli_example_attacks_the_same_module_by_import_path(tmp_path, monkeypatch):
    section = _section("Attack your own model", "own-model.md")
    (code,) = _blocks(section, "python")
    model_code = code[: code.index("torch.manual_seed")]  # the imports and the class MyNet
    (tmp_path / "my_models.py").write_text(model_code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_models", raising=False)  # this test's own module, not a cached one
    monkeypatch.chdir(ROOT)
    (command,) = [line for line in _blocks(section, "bash")[0].splitlines() if line.startswith("leakage fit")]
    args = shlex.split(command)[1:]
    from leakage.cli import main

    main(args + ["--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), "--trainer.enable_progress_bar", "false",
                 "--data.indices", "[0]"])
    (run,) = (tmp_path / "logs").glob("*/version_*")
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert float(rows[0]["ssim"]) >= 0.9


def test_the_yaml_example_is_a_valid_fit_config(tmp_path):
    (config,) = _blocks(_section("Attack your own model", "own-model.md"), "yaml")
    data = yaml.safe_load(config)
    assert data["model"]["model"]["class_path"] == "torchvision.models.resnet18"
    data["model"].pop("model_weights")  # the reader's own checkpoint
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(data))
    from leakage.cli import main

    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(path), "--print_config"])
    assert done.value.code in (0, None)


PATIENTS = ("ward,age,stay_days,city,readmitted\n"
            "surgery,54,3,Bern,no\ncardio,71,9,Chur,yes\nsurgery,38,2,Basel,no\noncology,66,12,Bern,yes\n"
            "cardio,49,4,Basel,no\noncology,58,7,Chur,yes\nsurgery,45,5,Bern,no\ncardio,80,11,Chur,yes\n")


def test_the_tabular_python_example_reconstructs_a_batch_with_known_labels(tmp_path, monkeypatch, capsys):
    """Tabular data's Python block on the 8-record patients.csv it describes: a batch of 4, labels known."""
    import torch

    (code,) = _blocks(_section("Tabular data", "tables.md"), "python")
    (tmp_path / "patients.csv").write_text(PATIENTS)
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(code, "docs/tables.md", "exec"), {"__name__": "readme_example"})
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "threat model: honest-but-curious server; the labels are public (known to the server)"
    assert "records' accuracy (TabLeak's): 100.0%  label accuracy 100.0%" in out
    assert "H cat (0-1)" in out and "-0.000" not in out and "nan" not in out
