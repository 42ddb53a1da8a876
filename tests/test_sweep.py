"""`leakage sweep`: the grid, breaking points, studies over config keys, outputs, and resuming an
interrupted sweep."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from leakage.cli import main
from leakage.sweep import Sweep, parse

from conftest import CONFIGS, cli_error

TINY = ["--trainer.max_steps", "2", "--model.optimizer.max_iter", "2", "--data.num_victims", "2"]


def _config(tmp_path: Path, **sweep) -> Path:
    cfg = yaml.safe_load((CONFIGS / "defense_sweep.yaml").read_text())
    cfg["data"]["source"]["init_args"]["dataset"] = "mnist"
    cfg["sweep"].update(output=str(tmp_path / "sweep"), **sweep)
    cfg["sweep"]["defenses"] = [
        {"name": "noise", "class_path": "leakage.federated.defenses.GaussianNoise", "param": "sigma",
         "values": [0.0, 1.0], "stronger": "larger"},
        {"name": "topk", "class_path": "leakage.federated.defenses.TopK", "param": "keep_ratio",
         "values": [1.0, 0.01], "stronger": "smaller"},
    ]
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_sweep_writes_tables_plots_and_hparams(tmp_path, capsys):
    cfg = _config(tmp_path, refine=0)
    main(["sweep", "--config", str(cfg), *TINY])
    out = tmp_path / "sweep"
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sorted((r["defense"], float(r["value"])) for r in rows) == [
        ("noise", 0.0), ("noise", 1.0), ("topk", 0.01), ("topk", 1.0)]
    assert all(r["status"] == "ok" and r["victims"] == "2" for r in rows)
    assert all(float(r["time_s"]) > 0 and float(r["entries_per_unknown"]) > 0 for r in rows)
    assert all(r["threat_model"].startswith("honest-but-curious server") for r in rows)
    md = (out / "results.md").read_text()
    assert md.startswith("Threat model: honest-but-curious server")
    assert "| sigma | label accuracy | MSE | SSIM | PSNR | attack success rate |" in md
    assert "| keep_ratio |" in md and "### Breaking points" in md
    assert (out / "noise.png").stat().st_size > 0 and (out / "topk.png").stat().st_size > 0
    points = json.loads((out / "breaking_points.json").read_text())
    assert [p["defense"] for p in points] == ["noise", "topk"]
    # every cell is a full fit run with its own TensorBoard events and metrics
    for cell in ("noise=0", "noise=1", "topk=1", "topk=0.01"):
        run = out / "runs" / cell
        assert (run / "metrics.json").exists() and list(run.glob("events.out.tfevents.*"))
        defenses = json.loads((run / "metrics.json").read_text())["defenses"]
        assert defenses[-1]["defense"] in ("gaussian_noise", "top_k")
    # the hparams view compares the cells, under the docs' `tensorboard --logdir <output>`: one
    # experiment (the tab's columns) in the whole folder, one session (row) per cell
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import metadata

    runs = [p for p in (out / "hparams").iterdir() if p.is_dir()]
    assert len(runs) == 4
    acc = EventAccumulator(str(runs[0]))
    acc.Reload()
    assert "hparam/ssim" in acc.Tags()["scalars"]
    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(out))
    mux.Reload()
    content = mux.PluginRunToTagToContent(metadata.PLUGIN_NAME)
    experiments = [run for run, tags in content.items() if metadata.EXPERIMENT_TAG in tags]
    assert experiments == ["hparams"]
    exp = metadata.parse_experiment_plugin_data(content["hparams"][metadata.EXPERIMENT_TAG])
    assert {"defense", "strength"} <= {h.name for h in exp.hparam_infos}
    assert {"hparam/success_rate", "hparam/ssim"} <= {m.name.tag for m in exp.metric_infos}
    sessions = {run: metadata.parse_session_start_info_plugin_data(tags[metadata.SESSION_START_INFO_TAG])
                for run, tags in content.items() if metadata.SESSION_START_INFO_TAG in tags}
    assert sorted(sessions) == [f"hparams/{c}" for c in ("noise=0", "noise=1", "topk=0.01", "topk=1")]
    rows_by_cell = {f"hparams/{r['cell']}": r for r in rows}
    for run, start in sessions.items():
        assert start.hparams["defense"].string_value == rows_by_cell[run]["defense"]
        assert start.hparams["strength"].number_value == float(rows_by_cell[run]["value"])
        cell = EventAccumulator(str(out / run))
        cell.Reload()
        assert cell.Scalars("hparam/success_rate")[-1].value == pytest.approx(float(rows_by_cell[run]["success_rate"]))
    assert "attack success rate" in capsys.readouterr().out
    # report.html: the defense curves, the breaking points and every cell's own report
    from htmlpage import embedded_pngs, read_page

    from leakage.reporting.htmlreport import fmt

    page = read_page(out / "report.html")
    body = (out / "report.html").read_text().split("<body>", 1)[1].lstrip()  # the threat model first
    assert body.startswith('<p class="threat-line"><b>Threat model: honest-but-curious server.</b></p>')
    text = " ".join(page.text)
    assert "honest-but-curious server" in text and "Breaking points" in text
    header = next(r for r in page.rows if r[:3] == ["defense", "parameter", "breaking point"])
    bp = {r[0]: r for r in page.rows if len(r) == len(header) and r[0] in ("noise", "topk")}
    for p in points:
        assert bp[p["defense"]][1] == p["param"]
        assert bp[p["defense"]][2] == ("none" if p["breaking_point"] is None else fmt(p["breaking_point"]))
        assert bp[p["defense"]][5] == p["note"]
    assert len(embedded_pngs(page)) == 2  # noise.png and topk.png
    assert sorted(page.links) == [f"runs/{c}/report.html" for c in ("noise=0", "noise=1", "topk=0.01", "topk=1")]
    assert all((out / link).is_file() for link in page.links)


def test_breaking_point_is_refined_between_leak_and_hold(tmp_path):
    sweep = parse(["--config", str(_config(tmp_path, refine=2))])
    # stand-in results: success falls with sigma, holding from sigma >= 0.3 on
    calls = []

    def fake(defense, value):
        calls.append(value)
        rate = 1.0 if value < 0.3 else 0.0
        return {"status": "ok", "success_rate": rate}

    sweep.result = fake
    noise = sweep.defenses[0]
    noise["values"] = [0.0, 0.1, 1.0]
    point = sweep.breaking_point(noise)
    # grid 0, 0.1, 1 -> leaks at 0.1, holds at 1; bisect geometrically: 0.316 (holds), 0.178 (leaks)
    assert calls[:3] == [0.0, 0.1, 1.0]
    assert calls[3] == pytest.approx(0.1 ** 0.5) and calls[4] == pytest.approx((0.1 * 0.1 ** 0.5) ** 0.5)
    assert point["breaking_point"] == pytest.approx(0.1 ** 0.5)
    assert point["last_leaking"] == pytest.approx(calls[4])
    assert point["resolution"] == pytest.approx(0.1 ** 0.5 - calls[4])


def test_interrupted_sweep_resumes_without_redoing_or_losing_cells(tmp_path):
    cfg = _config(tmp_path, refine=0)
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-c", "from leakage.cli import main; main()", "sweep", "--config", str(cfg), *TINY,
           "--sweep.batch", "false"]  # one fit per cell: cells complete one at a time
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "cells").glob("*.json"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # interrupted mid-sweep, whatever it was doing
    proc.wait()
    done = {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in (out / "cells").glob("*.json")}
    assert 2 <= len(done) < 4, sorted(done)
    for text in (t for _, t in done.values()):
        json.loads(text)  # what was written is whole
    # started again: finishes the rest and leaves the completed cells alone
    main(["sweep", "--config", str(cfg), *TINY])
    after = {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in (out / "cells").glob("*.json")}
    assert len(after) == 4
    for name, value in done.items():
        assert after[name] == value
    assert not list(out.rglob("*.tmp"))
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: c.pop("sweep"), "sweep' section"),
        (lambda c: c["sweep"].update(defenses=[]), "list of defenses"),
        (lambda c: c["sweep"]["defenses"][0].pop("param"), "needs 'param'"),
        (lambda c: c["sweep"]["defenses"][0].update(stronger="up"), "stronger"),
        (lambda c: c["sweep"].update(target_success=1.5), "target_success"),
        (lambda c: c["sweep"]["defenses"][0].update(class_path="leakage.federated.defenses.Nope"), "unknown defense class"),
        (lambda c: c["sweep"].update(studies=[{"name": "b", "values": [1, 2]}]), "study entry 'b' needs 'key'"),
        (lambda c: c["sweep"].update(studies=[{"name": "b", "key": "data.batch_size"}]), "needs 'values'"),
        (lambda c: c["sweep"].update(studies=[{"name": "b", "key": "data.batch_size", "values": []}]),
         "values must be a non-empty list"),
        (lambda c: c["sweep"].update(studies=[{"name": "b", "key": "data.batch_size", "values": [1, 2],
                                               "per_value": {4: {"data.num_victims": 1}}}]), "per_value 4 is not one"),
        (lambda c: c["sweep"].update(studies=[{"name": "b", "key": "data..batch_size", "values": [1]}]),
         "dotted path"),
        (lambda c: c["sweep"].update(studies=[{"name": "noise", "key": "data.batch_size", "values": [1]}]),
         "names must be unique"),
        (lambda c: c["sweep"].update(studies=[{"name": "Noise", "key": "data.batch_size", "values": [1]}]),
         "names must be unique (ignoring case"),
        (lambda c: c["sweep"]["defenses"][0]["init_args"].update(sigmaa=1),
         "sweep defense 'noise': GaussianNoise has no argument 'sigmaa'; its arguments: sigma, relative, seed"),
        (lambda c: c["sweep"]["defenses"][0].update(param="sigmaa"),
         "param 'sigmaa' is not an argument of GaussianNoise; its arguments: sigma, relative, seed"),
        (lambda c: c["sweep"]["defenses"][0]["init_args"].update(sigma=1), "init_args sets 'sigma', the param"),
        (lambda c: c["sweep"]["defenses"][0].update(class_path="DPGaussian", param="noise_multiplier", init_args={}),
         "DPGaussian needs max_norm in init_args"),
        (lambda c: c["sweep"]["defenses"][0].update(values=[0, "lots"]), "each of values must be a number, got 'lots'"),
        (lambda c: c["sweep"]["defenses"].append("topk"), "a sweep defense must be a mapping"),
    ],
)
def test_bad_sweep_configs_are_clear_errors(tmp_path, capsys, edit, match):
    cfg = yaml.safe_load((CONFIGS / "defense_sweep.yaml").read_text())
    cfg["sweep"]["output"] = str(tmp_path / "sweep")
    edit(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--config", str(path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("leakage: error:") and match in err[0], err


def test_a_cell_with_a_bad_defense_setting_is_marked_failed_not_lost(tmp_path):
    cfg = _config(tmp_path, refine=0)
    data = yaml.safe_load(cfg.read_text())
    data["sweep"]["defenses"] = [{"name": "topk", "class_path": "leakage.federated.defenses.TopK", "param": "keep_ratio",
                                  "values": [1.0, 2.0], "stronger": "smaller"}]
    cfg.write_text(yaml.safe_dump(data))
    main(["sweep", "--config", str(cfg), *TINY])
    rows = {float(r["value"]): r for r in csv.DictReader(open(tmp_path / "sweep" / "results.csv"))}
    assert rows[1.0]["status"] == "ok"
    assert rows[2.0]["status"] == "failed" and "keep_ratio" in rows[2.0]["error"]
    points = json.loads((tmp_path / "sweep" / "breaking_points.json").read_text())
    assert points[0]["breaking_point"] is None or points[0]["breaking_point"] == 1.0
    assert "leaks at 2" not in (tmp_path / "sweep" / "results.md").read_text()


# --------------------------------------------------------------------------- studies over config keys
def _study_config(tmp_path: Path, studies: list[dict], **sweep) -> Path:
    cfg = yaml.safe_load((CONFIGS / "defense_sweep.yaml").read_text())
    cfg["data"]["source"]["init_args"]["dataset"] = "mnist"
    cfg["model"]["labels"] = "bias_count"  # iDLG's labels need B = 1
    del cfg["sweep"]["defenses"]
    cfg["sweep"].update(output=str(tmp_path / "sweep"), studies=studies, **sweep)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


BATCH_STUDY = {"name": "mnist", "key": "data.batch_size", "values": [1, 2], "set": {"data.source.init_args.dataset": "mnist"}}


def test_study_over_batch_size_writes_rows_tables_plot_and_hparams(tmp_path, capsys):
    cfg = _study_config(tmp_path, [BATCH_STUDY], success_ssim=0.9)
    main(["sweep", "--config", str(cfg), *TINY])
    out = tmp_path / "sweep"
    cells = {b: json.loads((out / "cells" / f"mnist.batch_size={b}.json").read_text()) for b in (1, 2)}
    for b, row in cells.items():
        assert row["status"] == "ok" and row["study"] == "mnist" and row["key"] == "data.batch_size"
        assert row["value"] == b and type(row["value"]) is int
        assert type(row["victims"]) is int and row["victims"] == 2
        assert isinstance(row["time_s"], float) and row["time_s"] > 0
        assert 0 <= row["success_rate"] <= 1 and 0 <= row["label_acc"] <= 1
        # batches are scored image by image: 2 updates of b images each
        assert row["images"] == 2 * b and 0 <= row["image_success"] <= row["images"]
        assert row["image_success_rate"] == row["image_success"] / row["images"]
        # the value reached the fit as an int: the run's own saved config holds it
        run_cfg = yaml.safe_load((out / "runs" / row["cell"] / "config.yaml").read_text())
        assert run_cfg["data"]["batch_size"] == b and type(run_cfg["data"]["batch_size"]) is int
        assert run_cfg["data"]["source"]["init_args"]["dataset"] == "mnist"
        metrics = json.loads((out / "runs" / row["cell"] / "metrics.json").read_text())
        assert all(len(v["indices"]) == b for v in metrics["victims"])
        assert row["entries_per_unknown"] == pytest.approx(metrics["summary"]["entries_per_unknown"])
        per_image = [x for v in metrics["victims"] for x in v["ssim_images"]]
        assert row["image_success"] == sum(x >= 0.9 for x in per_image)
    # LeNet on MNIST: 13,426 gradient entries per update, 784 unknown values per image
    assert cells[1]["entries_per_unknown"] == pytest.approx(13426 / 784)
    assert cells[2]["entries_per_unknown"] == pytest.approx(cells[1]["entries_per_unknown"] / 2)

    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["study"], r["key"], r["value"], r["status"]) for r in rows] == [
        ("mnist", "data.batch_size", "1", "ok"), ("mnist", "data.batch_size", "2", "ok")]
    assert all(r["defense"] == "" and float(r["time_s"]) > 0 for r in rows)
    assert float(rows[1]["entries_per_unknown"]) == pytest.approx(float(rows[0]["entries_per_unknown"]) / 2)
    md = (out / "results.md").read_text()
    assert "### mnist (data.batch_size)" in md
    assert ("| B | label accuracy | mean SSIM | PSNR | images with SSIM >= 0.9 | client updates | time (s) | "
            "gradient entries per unknown |" in md)
    assert re.search(r"^\| 1 \| \d+% \| -?[\d.]+ \| [\d.]+ \| \d+% \([0-2]/2\) \| 2 \| [\d.]+ \| 17\.12 \|$", md, re.M), md
    assert re.search(r"^\| 2 \| \d+% \| -?[\d.]+ \| [\d.]+ \| \d+% \([0-4]/4\) \| 2 \| [\d.]+ \| 8\.56 \|$", md, re.M), md
    assert "| 17.12 |" in md and "| 8.56 |" in md
    assert "dataset: mnist; model: lenet" in md
    assert "breaking" not in md.lower() and not (out / "breaking_points.json").exists()
    assert (out / "mnist.png").stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = sorted(p for p in (out / "hparams").iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["mnist.batch_size=1", "mnist.batch_size=2"]
    acc = EventAccumulator(str(runs[0]))
    acc.Reload()
    assert {"hparam/ssim", "hparam/time_s", "hparam/entries_per_unknown"} <= set(acc.Tags()["scalars"])
    assert "gradient entries per unknown" in capsys.readouterr().out


def test_study_config_applies_set_value_and_per_value_in_order(tmp_path):
    study = {"name": "s", "key": "model.dummies.restarts", "values": [1, 3],
             "set": {"data.num_victims": 5, "new_section.deep.key": "x"},
             "per_value": {3: {"data.num_victims": 1, "model.dummies.restarts": 2}}}
    sweep = parse(["--config", str(_study_config(tmp_path, [study]))])
    s = sweep.studies[0]
    one, three = sweep.study_config(s, 1), sweep.study_config(s, 3)
    assert one["data"]["num_victims"] == 5 and one["model"]["dummies"]["restarts"] == 1
    assert one["new_section"] == {"deep": {"key": "x"}}  # sections are created on the way
    assert three["data"]["num_victims"] == 1 and three["model"]["dummies"]["restarts"] == 2  # per_value wins
    assert sweep.base["data"]["num_victims"] == 20 and "new_section" not in sweep.base  # the base is untouched
    assert sweep.studies[0]["label"] == "model.dummies.restarts"


def test_study_resumes_skipping_completed_cells_and_redoing_interrupted_ones(tmp_path):
    out = tmp_path / "sweep"
    main(["sweep", "--config", str(_study_config(tmp_path, [{**BATCH_STUDY, "values": [1]}])), *TINY])
    done = out / "cells" / "mnist.batch_size=1.json"
    before = (done.stat().st_mtime_ns, done.read_text())
    # an interrupted cell leaves a partial run folder and no cell file
    partial = out / "runs" / "mnist.batch_size=2"
    partial.mkdir(parents=True)
    (partial / "leftover").write_text("partial")
    main(["sweep", "--config", str(_study_config(tmp_path, [BATCH_STUDY])), *TINY])
    assert (done.stat().st_mtime_ns, done.read_text()) == before
    assert not (partial / "leftover").exists() and (partial / "metrics.json").exists()
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["value"], r["status"]) for r in rows] == [("1", "ok"), ("2", "ok")]
    assert not list(out.rglob("*.tmp"))


def test_a_study_cell_with_a_bad_key_is_marked_failed_with_a_clear_error(tmp_path):
    studies = [{"name": "bad", "key": "data.no_such_key", "values": [3]},
               {"name": "nosection", "key": "nowhere.x", "values": [1]},
               {"name": "badtype", "key": "data.batch_size", "values": ["two"]},
               {"name": "scalar", "key": "seed_everything.x", "values": [1]}]
    main(["sweep", "--config", str(_study_config(tmp_path, studies)), *TINY])
    rows = {r["study"]: r for r in csv.DictReader(open(tmp_path / "sweep" / "results.csv"))}
    assert all(r["status"] == "failed" and "\n" not in r["error"] for r in rows.values())
    assert rows["bad"]["error"].startswith("unknown config key 'data.no_such_key'")
    assert rows["nosection"]["error"].startswith("unknown config key 'nowhere.x'")
    assert rows["badtype"]["error"].startswith("invalid value for data.batch_size:") and "two" in rows["badtype"]["error"]
    assert rows["scalar"]["error"].startswith("cannot set 'seed_everything.x': 'seed_everything' is 0")
    assert "| 3 | failed: unknown config key 'data.no_such_key'" in (tmp_path / "sweep" / "results.md").read_text()


def test_a_fit_option_that_overrides_the_swept_key_is_refused(tmp_path):
    cfg = _study_config(tmp_path, [BATCH_STUDY])
    with pytest.raises(ValueError, match="would override the key that study 'mnist' sweeps"):
        parse(["--config", str(cfg), "--data.batch_size", "4"])


def test_a_cell_computed_with_another_configuration_is_run_again_not_reused(tmp_path, capsys):
    out = tmp_path / "sweep"
    cfg = _study_config(tmp_path, [{**BATCH_STUDY, "values": [1]}])
    main(["sweep", "--config", str(cfg), *TINY])
    done = out / "cells" / "mnist.batch_size=1.json"
    first = json.loads(done.read_text())
    # the same cell id with another attack budget: its old result must not be reported as this one
    changed = [a if a != "2" else "3" for a in TINY]
    assert changed != TINY
    main(["sweep", "--config", str(cfg), *changed])
    assert "was run with another configuration; running it again" in capsys.readouterr().err
    second = json.loads(done.read_text())
    assert second["fingerprint"] != first["fingerprint"] and second["status"] == "ok"
    # a cell left in the folder by a study this sweep no longer has is not in the tables
    stale = out / "cells" / "gone.batch_size=1.json"
    stale.write_text(json.dumps({**first, "study": "gone", "cell": "gone.batch_size=1"}))
    main(["sweep", "--config", str(cfg), *changed])
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["study"] for r in rows] == ["mnist"]


# --------------------------------------------------------------------------- hostile or mistyped configs
NOISE = {"name": "noise", "class_path": "leakage.federated.defenses.GaussianNoise", "param": "sigma", "values": [0.0]}


def _one_defense(tmp_path: Path, defense: dict, **sweep) -> Path:
    """A sweep config of one defense (one tiny cell per value) into ``tmp_path/sweep``."""
    cfg = yaml.safe_load((CONFIGS / "defense_sweep.yaml").read_text())
    cfg["data"]["source"]["init_args"]["dataset"] = "mnist"
    cfg["sweep"].update({"output": str(tmp_path / "sweep"), "refine": 0, **sweep})
    cfg["sweep"]["defenses"] = [defense]
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _outside(tmp_path: Path) -> dict:
    """Every file and folder under ``tmp_path`` but the sweep output, with its contents."""
    return {str(p.relative_to(tmp_path)): p.read_bytes() if p.is_file() else None
            for p in tmp_path.rglob("*") if p.relative_to(tmp_path).parts[0] != "sweep"}


ALLOWED_DEFENSES = "DPGaussian, GaussianNoise, NormClip, SecureAggregation, TopK"


def test_a_defense_class_outside_the_package_is_refused_and_never_run(tmp_path, capsys):
    marker = tmp_path / "marker"
    cfg = _one_defense(tmp_path, {"name": "evil", "class_path": "subprocess.run", "param": "timeout", "values": [10],
                                  "init_args": {"args": ["touch", str(marker)]}})
    line = cli_error(capsys, ["sweep", "--config", str(cfg), *TINY])
    assert line.startswith("leakage: error: unknown defense class 'subprocess.run'") and ALLOWED_DEFENSES in line
    assert not marker.exists() and not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("class_path, param", [
    ("evil_defense.Evil", "sigma"),  # a Defense subclass, but in the user's module: never imported
    ("os.system", "command"),
    ("builtins.eval", "source"),
    ("leakage.cli.main", "args"),  # inside the package, but not a defense
    ("leakage.federated.defenses.Defense", "sigma"),  # the base class, not a defense
    ("leakage.federated.defenses.gaussian_noise", "sigma"),
])
def test_only_the_package_s_defense_classes_are_accepted_and_nothing_else_is_imported(
        tmp_path, capsys, monkeypatch, class_path, param):
    marker = tmp_path / "imported"
    (tmp_path / "evil_defense.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\n"
        "from leakage.federated.defenses import GaussianNoise\n\n\nclass Evil(GaussianNoise):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = _one_defense(tmp_path, {"name": "evil", "class_path": class_path, "param": param, "values": [0]})
    try:
        line = cli_error(capsys, ["sweep", "--config", str(cfg), *TINY])
        assert line.startswith(f"leakage: error: unknown defense class '{class_path}'") and ALLOWED_DEFENSES in line
        assert not marker.exists() and "evil_defense" not in sys.modules
        assert not (tmp_path / "sweep").exists()
    finally:
        sys.modules.pop("evil_defense", None)


def test_a_defense_named_by_its_short_name_is_the_package_s_class(tmp_path):
    sweep = parse(["--config", str(_one_defense(tmp_path, {**NOISE, "class_path": "GaussianNoise",
                                                           "init_args": {"relative": True}}))])
    d = sweep.defenses[0]
    assert d["class_path"] == "leakage.federated.defenses.GaussianNoise"
    assert sweep.defense_config(d, 0.5)["trainer"]["callbacks"][-1] == {
        "class_path": "leakage.federated.defenses.GaussianNoise", "init_args": {"relative": True, "sigma": 0.5}}


@pytest.mark.parametrize("kind", ["defense", "study"])
@pytest.mark.parametrize("name", ["../../victim", "ABSOLUTE", "a/b", "", ".."])
def test_a_name_that_is_not_a_plain_file_name_is_refused_and_nothing_outside_is_touched(
        tmp_path, capsys, monkeypatch, kind, name):
    monkeypatch.chdir(tmp_path)
    if name == "ABSOLUTE":
        name = str(tmp_path / "victim")
    # where a cell folder (runs/<name>=0) and a plot (<name>.png) of these names land: both exist
    (tmp_path / "victim=0").mkdir()
    (tmp_path / "victim=0" / "precious.txt").write_text("keep me")
    (tmp_path / "victim.png").write_text("keep me too")
    if kind == "defense":
        cfg = _one_defense(tmp_path, {**NOISE, "name": name})
    else:
        cfg = _study_config(tmp_path, [{**BATCH_STUDY, "name": name, "values": [1]}])
    before = _outside(tmp_path)
    line = cli_error(capsys, ["sweep", "--config", str(cfg), *TINY])
    assert line.startswith(f"leakage: error: sweep {kind} name {name!r} is not allowed")
    assert "letters, digits, '_' and '-' only" in line
    assert _outside(tmp_path) == before and not (tmp_path / "sweep").exists()


def test_a_cell_folder_that_resolves_outside_the_output_is_never_deleted(tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "noise=0").mkdir(parents=True)
    (elsewhere / "noise=0" / "precious.txt").write_text("keep me")
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "runs").symlink_to(elsewhere, target_is_directory=True)
    line = cli_error(capsys, ["sweep", "--config", str(_one_defense(tmp_path, NOISE)), *TINY])
    assert "outside the sweep output" in line
    assert (elsewhere / "noise=0" / "precious.txt").read_text() == "keep me"
    assert [p.name for p in elsewhere.iterdir()] == ["noise=0"]


def test_unknown_sweep_keys_name_the_key_and_the_allowed_ones(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a misspelt output must not put a sweep into the working directory either
    cfg = _one_defense(tmp_path, NOISE)
    data = yaml.safe_load(cfg.read_text())
    data["sweep"]["outptu"] = data["sweep"].pop("output")
    cfg.write_text(yaml.safe_dump(data))
    assert cli_error(capsys, ["sweep", "--config", str(cfg), *TINY]) == (
        "leakage: error: unknown sweep key 'outptu'; allowed: output, success_ssim, target_success, refine, "
        "batch, defenses, studies")
    cfg = _one_defense(tmp_path, {**NOISE, "strongr": "larger"})
    assert cli_error(capsys, ["sweep", "--config", str(cfg), *TINY]) == (
        "leakage: error: sweep defense 'noise': unknown key 'strongr'; allowed: name, class_path, param, values, "
        "stronger, init_args")
    cfg = _one_defense(tmp_path, NOISE)
    assert cli_error(capsys, ["sweep", "--config", str(cfg), "--sweep.outptu", "x", *TINY]) == (
        "leakage: error: unknown sweep option '--sweep.outptu'; allowed: --sweep.output, --sweep.success_ssim, "
        "--sweep.target_success, --sweep.refine, --sweep.batch")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.yaml"]


@pytest.mark.parametrize("sweep, values, args, match", [
    ({}, [0.0, float("nan")], [], "sweep defense 'noise': each of values must be a finite number, got nan"),
    ({}, [float("inf")], [], "sweep defense 'noise': each of values must be a finite number, got inf"),
    ({}, ["-inf"], [], "sweep defense 'noise': each of values must be a finite number, got '-inf'"),
    ({"success_ssim": float("nan")}, [0.0], [], "sweep success_ssim must be a finite number, got nan"),
    ({"success_ssim": 1.5}, [0.0], [], "sweep success_ssim must be in [0, 1], got 1.5"),
    ({}, [0.0], ["--sweep.success_ssim", "nan"], "sweep success_ssim must be a finite number, got 'nan'"),
    ({"target_success": float("-inf")}, [0.0], [], "sweep target_success must be a finite number, got -inf"),
    ({"refine": -1}, [0.0], [], "sweep refine must be a whole number >= 0, got -1"),
    ({"refine": 2.5}, [0.0], [], "sweep refine must be a whole number >= 0, got 2.5"),
    ({}, [0.0], ["--sweep.refine", "two"], "sweep refine must be a whole number >= 0, got 'two'"),
    ({"output": ""}, [0.0], [], "sweep output must be a folder name, got ''"),
])
def test_sweep_values_out_of_range_or_not_finite_are_refused(tmp_path, capsys, monkeypatch, sweep, values, args,
                                                            match):
    monkeypatch.chdir(tmp_path)
    cfg = _one_defense(tmp_path, {**NOISE, "values": values}, **sweep)
    line = cli_error(capsys, ["sweep", "--config", str(cfg), *args, *TINY])
    assert line == f"leakage: error: {match}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.yaml"]


@pytest.mark.parametrize("text, reason", [
    ("sweep: [unclosed\n", "expected ',' or ']'"),
    ("- a list\n- of things\n", "the top level must be a mapping of sections"),
    ("sweep: 3\n", "section 'sweep' must be a mapping, got 3"),
    ("data: [1, 2]\nsweep: {output: x}\n", "section 'data' must be a mapping, got [1, 2]"),
    (b"sweep:\n  output: \xff\xfe\n", "can't decode byte 0xff"),
])
def test_a_corrupt_sweep_config_is_one_line(tmp_path, capsys, text, reason):
    path = tmp_path / "bad.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    line = cli_error(capsys, ["sweep", "--config", str(path)])
    assert line.startswith(f"leakage: error: cannot read sweep config {path}: ") and reason in line, line


# --------------------------------------------------------------------------- one sweep per output folder
def _lock(out: Path, pid: int) -> Path:
    """A lock in ``out`` held by process ``pid`` of this host, written by hand."""
    out.mkdir(parents=True, exist_ok=True)
    lock = out / "sweep.lock"
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    return lock


def test_a_sweep_into_an_output_in_use_by_a_live_process_is_refused(tmp_path, capsys):
    out = tmp_path / "sweep"
    lock = _lock(out, os.getpid())  # a process that runs: this one
    held = lock.read_text()
    line = cli_error(capsys, ["sweep", "--config", str(_one_defense(tmp_path, NOISE)), *TINY])
    assert line.startswith(f"leakage: error: the sweep output {out} is in use by another sweep (pid {os.getpid()});")
    assert lock.read_text() == held  # still the other sweep's
    assert not list((out / "cells").glob("*")) and not (out / "results.csv").exists()


def test_a_lock_of_a_dead_process_is_taken_over_held_while_running_and_released(tmp_path, capsys, monkeypatch):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out = tmp_path / "sweep"
    lock = _lock(out, gone.pid)
    held, run = [], Sweep._run

    def spy(self, *args):
        held.append(json.loads(lock.read_text())["pid"])
        return run(self, *args)

    monkeypatch.setattr(Sweep, "_run", spy)
    main(["sweep", "--config", str(_one_defense(tmp_path, NOISE)), *TINY])
    assert held == [os.getpid()]
    assert f"from pid {gone.pid}, which is no longer running" in capsys.readouterr().err
    assert not lock.exists()
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["defense"], r["value"], r["status"]) for r in rows] == [("noise", "0.0", "ok")]


def test_the_lock_is_released_when_a_sweep_fails(tmp_path, monkeypatch, capsys):
    lock = tmp_path / "sweep" / "sweep.lock"
    held = []

    def interrupted(self, *args):
        held.append(json.loads(lock.read_text())["pid"])
        raise KeyboardInterrupt

    monkeypatch.setattr(Sweep, "_run", interrupted)
    with pytest.raises(SystemExit) as stop:
        main(["sweep", "--config", str(_one_defense(tmp_path, NOISE)), *TINY])
    assert stop.value.code == 1 and capsys.readouterr().err.strip().endswith("leakage: interrupted")
    assert held == [os.getpid()] and not lock.exists()


# --------------------------------------------------------------------------- cell names and logger overrides
ONE = ["--trainer.max_steps", "1", "--model.optimizer.max_iter", "1", "--data.num_victims", "1"]


def test_a_deep_refine_keeps_every_cell_it_ran(tmp_path, capsys, monkeypatch):
    """refine 28 on sigma in [0, 0.01] converging on a breaking point that is not 0: the bisection
    values agree in many digits. Every cell the search runs has a file of its own, named after its
    exact value. The attack's outcome stands in (holding from sigma = 0.0046664123 on), like
    test_breaking_point_is_refined_between_leak_and_hold: the names, cell files, tables and search
    are the sweep's own."""
    threshold = 0.0046664123
    cfg = _one_defense(tmp_path, {**NOISE, "values": [0.0, 0.01]}, refine=28, batch=False)
    sweep = parse(["--config", str(cfg), *ONE])
    ran = []

    def attack(cid, cfg, row):
        ran.append(row["value"])
        rate = 0.0 if row["value"] >= threshold else 1.0
        return {**row, "status": "ok", "victims": 1, "failed": 0, "success": int(rate), "success_rate": rate,
                "images": 1, "image_success": int(rate), "image_success_rate": rate, "label_acc": 1.0, "mse": 0.1,
                "ssim": 0.5, "psnr": 10.0, "time_s": 0.0, "entries_per_unknown": 1.0}

    monkeypatch.setattr(sweep, "_run", attack)
    monkeypatch.setattr("leakage.sweep.cells.write_plots", lambda *a: None)  # 30 plots say nothing here
    (point,) = sweep.run()
    assert "running it again" not in capsys.readouterr().err
    assert len(ran) == len(set(ran)) > 20
    cells = {json.loads(p.read_text())["value"] for p in (tmp_path / "sweep" / "cells").glob("noise=*.json")
             if not p.name.endswith(".config.yaml")}
    assert cells == set(ran)  # every cell it ran is kept, none overwritten
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "results.csv")))
    assert sorted(float(r["value"]) for r in rows) == sorted(ran)
    assert point["last_leaking"] < threshold <= point["breaking_point"]
    held, leaked = re.match(r"holds at sigma = (\S+), leaks at (\S+?)[ ,]", point["note"] + " ").groups()
    assert held != leaked and float(held) != float(leaked)
    assert "bisection stopped after" in point["note"]  # at the stated relative resolution, before 28 steps


def test_values_that_differ_past_six_digits_are_cells_of_their_own(tmp_path):
    cfg = _one_defense(tmp_path, {**NOISE, "values": [0.1, 0.1000011]})
    main(["sweep", "--config", str(cfg), *ONE])
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "results.csv")))
    assert sorted(r["cell"] for r in rows) == ["noise=0.1", "noise=0.1000011"]
    assert all((tmp_path / "sweep" / "runs" / r["cell"] / "metrics.json").exists() for r in rows)


@pytest.mark.parametrize("values", [[0.1, 0.1000001], [0.5, 0.5]])
def test_near_equal_grid_values_are_refused_as_duplicates(tmp_path, capsys, values):
    cfg = _one_defense(tmp_path, {**NOISE, "values": values})
    line = cli_error(capsys, ["sweep", "--config", str(cfg), *ONE])
    assert "are one setting (closer than 1e-06, relative)" in line
    study = _study_config(tmp_path, [{"name": "lr", "key": "model.optimizer.init_args.lr", "values": values}])
    line = cli_error(capsys, ["sweep", "--config", str(study), *ONE])
    assert "are one setting" in line


def test_logger_overrides_never_take_a_cell_s_files_out_of_the_sweep(tmp_path, capsys):
    cfg = _one_defense(tmp_path, {**NOISE, "values": [0.0, 1.0]})
    elsewhere = tmp_path / "elsewhere"
    main(["sweep", "--config", str(cfg), *ONE, "--sweep.batch", "false",
          "--trainer.logger.init_args.save_dir", str(elsewhere), "--trainer.logger.init_args.name=shared",
          "--trainer.logger.init_args.version", "0"])
    err = capsys.readouterr().err
    assert err.count("not using --trainer.logger.init_args.save_dir, --trainer.logger.init_args.name, "
                     "--trainer.logger.init_args.version") == 1
    assert not elsewhere.exists()
    for cell in ("noise=0", "noise=1"):
        run = tmp_path / "sweep" / "runs" / cell
        assert json.loads((run / "metrics.json").read_text())["defenses"][-1]["sigma"] == float(cell[6:])
        assert len(list(run.glob("events.out.tfevents.*"))) == 1


def test_a_full_disk_during_a_sweep_prints_the_table_and_says_what_was_not_written(tmp_path, capsys, monkeypatch):
    """The disk fills up as the first cell's attack ends (every atomic write under tmp_path from then
    on fails half-way with ENOSPC): that cell's result is still in the printed table, the next cell
    fails with the reason, and one line names the files the sweep could not write."""
    import errno

    from leakage.reporting import callbacks

    from test_runs import _disk_full_after

    original = callbacks.write_run_files

    def at_the_end(*args, **kwargs):
        _disk_full_after(tmp_path, monkeypatch)
        return original(*args, **kwargs)

    monkeypatch.setattr(callbacks, "write_run_files", at_the_end)
    cfg = _one_defense(tmp_path, {**NOISE, "values": [0.0, 1.0]}, batch=False)
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--config", str(cfg), *ONE])
    assert exc.value.code == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert "| 0 | 100% |" in out  # the first cell's row, though its file could not be written
    assert "| 1 | failed: cannot write to the run folder" in out and os.strerror(errno.ENOSPC) in out
    last = [ln for ln in err.splitlines() if ln.startswith("leakage: error: the sweep could not write")]
    assert len(last) == 1 and "cells/noise=0.json" in last[0] and "results.md" in last[0]
    sweep = tmp_path / "sweep"
    assert not (sweep / "cells" / "noise=0.json").exists() and not list(sweep.rglob(".*.tmp"))
    assert not (sweep / "runs" / "noise=0" / "gallery.png").exists()
