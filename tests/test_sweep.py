"""`leakage sweep`: the grid, breaking points, outputs, and resuming an interrupted sweep."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from leakage.cli import main
from leakage.sweep import parse

from conftest import CONFIGS

TINY = ["--trainer.max_steps", "2", "--model.lbfgs_max_iter", "2", "--data.num_victims", "2"]


def _config(tmp_path: Path, **sweep) -> Path:
    cfg = yaml.safe_load((CONFIGS / "defense_sweep.yaml").read_text())
    cfg["data"]["dataset"] = "mnist"
    cfg["sweep"].update(output=str(tmp_path / "sweep"), **sweep)
    cfg["sweep"]["defenses"] = [
        {"name": "noise", "class_path": "leakage.defenses.GaussianNoise", "param": "sigma",
         "values": [0.0, 1.0], "stronger": "larger"},
        {"name": "topk", "class_path": "leakage.defenses.TopK", "param": "keep_ratio",
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
    md = (out / "results.md").read_text()
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
    # the hparams view compares the cells
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = [p for p in (out / "hparams").iterdir() if p.is_dir()]
    assert len(runs) == 4
    acc = EventAccumulator(str(runs[0]))
    acc.Reload()
    assert "hparam/ssim" in acc.Tags()["scalars"]
    assert "attack success rate" in capsys.readouterr().out


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
    cmd = [sys.executable, "-c", "from leakage.cli import main; main()", "sweep", "--config", str(cfg), *TINY]
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
        (lambda c: c["sweep"]["defenses"][0].update(class_path="leakage.defenses.Nope"), "unknown defense class"),
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
    data["sweep"]["defenses"] = [{"name": "topk", "class_path": "leakage.defenses.TopK", "param": "keep_ratio",
                                  "values": [1.0, 2.0], "stronger": "smaller"}]
    cfg.write_text(yaml.safe_dump(data))
    main(["sweep", "--config", str(cfg), *TINY])
    rows = {float(r["value"]): r for r in csv.DictReader(open(tmp_path / "sweep" / "results.csv"))}
    assert rows[1.0]["status"] == "ok"
    assert rows[2.0]["status"] == "failed" and "keep_ratio" in rows[2.0]["error"]
    points = json.loads((tmp_path / "sweep" / "breaking_points.json").read_text())
    assert points[0]["breaking_point"] is None or points[0]["breaking_point"] == 1.0
    assert "leaks at 2" not in (tmp_path / "sweep" / "results.md").read_text()
