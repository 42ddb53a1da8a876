"""A sweep as one batched attack (`sweep.batch`): the defense cells that share the attack run as
problems of one fit, with the same results, files and resume behaviour as one fit per cell."""

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
from leakage.sweep.search import breaking_points

from conftest import CONFIGS

# enough L-BFGS for two MNIST digits to come back to SSIM 0.33 and 0.45 without a defense (and not under
# sigma = 1), in seconds
FAST = ["--trainer.max_steps", "4", "--model.optimizer.max_iter", "10", "--data.num_victims", "2"]
TINY = ["--trainer.max_steps", "2", "--model.optimizer.max_iter", "2", "--data.num_victims", "3"]
#: per-victim SSIM of the batched sweep versus one fit per cell: float32 rounding of a batched
#: convolution, carried on by L-BFGS; measured up to 0.007 at FAST's settings, only where the attack
#: fails (SSIM near 0), 0 on the full defense sweep (README, "A sweep is one batched attack")
SSIM_TOL = 0.02


def _config(tmp_path: Path, name: str, defenses: list[dict], **sweep) -> Path:
    cfg = yaml.safe_load((CONFIGS / "defense_sweep.yaml").read_text())
    cfg["data"]["source"]["init_args"]["dataset"] = "mnist"
    cfg["sweep"].update(output=str(tmp_path / name), defenses=defenses, **sweep)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


NOISE = {"name": "noise", "class_path": "GaussianNoise", "param": "sigma", "values": [0.0, 1.0], "stronger": "larger"}
TOPK = {"name": "topk", "class_path": "TopK", "param": "keep_ratio", "values": [1.0, 0.001], "stronger": "smaller"}


def _cells(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}


def _tfevent_tags(run: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run))
    acc.Reload()
    return set(acc.Tags()["scalars"]) | set(acc.Tags()["images"])


def test_a_batched_sweep_gives_the_results_and_files_of_one_fit_per_cell(tmp_path):
    refs = {}
    for batch in (False, True):
        name = "batched" if batch else "reference"
        main(["sweep", "--config", str(_config(tmp_path, name, [NOISE, TOPK], refine=1, success_ssim=0.3)), *FAST,
              "--sweep.batch", str(batch).lower()])
        refs[batch] = tmp_path / name
    one, batched = _cells(refs[False]), _cells(refs[True])
    assert sorted(one) == sorted(batched)
    assert len(one) == 6  # two grids of two, one bisection value per defense
    assert one["noise=0"]["success"] == one["topk=1"]["success"] == 2 and one["noise=1"]["success"] == 0
    for cid, ref in one.items():
        got = batched[cid]
        assert got["status"] == ref["status"] == "ok"
        assert (got["victims"], got["success"], got["failed"], got["fingerprint"], got["defenses"]) == \
               (ref["victims"], ref["success"], ref["failed"], ref["fingerprint"], ref["defenses"])
        assert got["ssim"] == pytest.approx(ref["ssim"], abs=SSIM_TOL)
        assert got["label_acc"] == ref["label_acc"]
        per_victim = [json.loads((refs[b] / "runs" / cid / "metrics.json").read_text())["victims"] for b in (False, True)]
        assert [v["recovered_labels"] for v in per_victim[0]] == [v["recovered_labels"] for v in per_victim[1]]
        assert [v["ssim"] for v in per_victim[1]] == pytest.approx([v["ssim"] for v in per_victim[0]], abs=SSIM_TOL)
    # the grid (4 cells) was one fit, then the bisection round's two cells another
    grid = sorted(c for c in batched if c.split("=")[1] in ("0", "1", "0.001"))
    assert all(sorted(batched[c]["group_cells"]) == grid for c in grid)
    mids = sorted(set(batched) - set(grid))
    assert all(sorted(batched[c]["group_cells"]) == mids for c in mids)
    for c in batched.values():
        assert c["time_s"] == pytest.approx(c["group_time_s"] / len(c["group_cells"]))
        assert "group_cells" not in one[c["cell"]]
    assert json.loads((refs[True] / "breaking_points.json").read_text()) == \
        json.loads((refs[False] / "breaking_points.json").read_text())
    # each cell's own run: its victims only, the files of a fit, its own config with its defense
    for cid in batched:
        run = refs[True] / "runs" / cid
        assert {p.name for p in run.iterdir()} >= {"metrics.csv", "metrics.json", "metrics.txt", "gallery.png",
                                                   "history.png", "report.html", "config.yaml", "hparams.yaml"}
        tags = _tfevent_tags(run)
        assert {"victim_00/ssim", "victim_01/ssim", "final/reconstructed", "attack/ssim_mean", "gallery"} <= tags
        assert "victim_02/ssim" not in tags
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert cfg["trainer"]["callbacks"][-1]["init_args"]["sigma" if cid.startswith("noise") else "keep_ratio"] == \
            batched[cid]["value"]
        assert cfg["trainer"]["logger"]["init_args"]["version"] == cid
    rows = {r["cell"]: r for r in csv.DictReader(open(refs[True] / "results.csv"))}
    assert all(float(rows[c]["group_time_s"]) > 0 for c in batched)
    assert not list(refs[True].glob("runs/*/.*")) and sorted(p.name for p in (refs[True] / "runs").iterdir()) == \
        sorted(batched)


def test_breaking_points_are_searched_in_rounds_that_ask_for_all_their_cells_at_once():
    rounds = []

    def results(requests):
        rounds.append([(d["name"], v) for d, v in requests])
        leaks = {"a": lambda v: v < 0.3, "b": lambda v: v > 0.2, "c": lambda v: False, "e": lambda v: True}
        return [{"status": "failed", "error": "out of memory"} if d["name"] == "d" or v == 9.0 else
                {"status": "ok", "success_rate": 1.0 if leaks[d["name"]](v) else 0.0} for d, v in requests]

    a = {"name": "a", "param": "sigma", "values": [0.0, 0.1, 1.0]}
    b = {"name": "b", "param": "keep_ratio", "values": [1.0, 0.1], "stronger": "smaller"}
    c = {"name": "c", "param": "sigma", "values": [5.0]}  # holds at once: no bisection
    d = {"name": "d", "param": "clients", "values": [4]}  # its only cell fails: nothing is known
    e = {"name": "e", "param": "clients", "values": [2, 9.0]}  # leaks where it ran
    points = breaking_points([a, b, c, d, e], results, lambda r: r["success_rate"] <= 0.1, refine=2)
    assert rounds[0][:6] == [("a", 0.0), ("a", 0.1), ("a", 1.0), ("b", 1.0), ("b", 0.1), ("c", 5.0)]
    assert [len(r) for r in rounds] == [9, 2, 2] and [n for n, _ in rounds[1]] == ["a", "b"]
    assert rounds[1][0][1] == pytest.approx(0.1 ** 0.5) and rounds[1][1][1] == pytest.approx(0.1 ** 0.5)
    assert points[0]["breaking_point"] == pytest.approx(0.1 ** 0.5)
    assert points[2]["breaking_point"] == 5.0 and points[2]["note"] == "already holds at the weakest setting tested (sigma = 5)"
    assert points[3]["breaking_point"] is None and points[3]["note"] == "not known: its only cell (clients = 4) could not run"
    assert points[4]["breaking_point"] is None
    assert points[4]["note"] == "leaks at every setting tested, up to clients = 2 (1 of its 2 cells could not run)"


def test_a_batched_sweep_reruns_only_the_missing_cells_and_reuses_completed_ones(tmp_path):
    cfg = _config(tmp_path, "sweep", [NOISE, TOPK], refine=0)
    out = tmp_path / "sweep"
    main(["sweep", "--config", str(cfg), *TINY, "--sweep.batch", "false"])
    kept = {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in (out / "cells").glob("noise*.json")}
    for p in (out / "cells").glob("topk*.json"):
        p.unlink()
    main(["sweep", "--config", str(cfg), *TINY])
    cells = _cells(out)
    assert {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in (out / "cells").glob("noise*.json")} == kept
    assert sorted(cells["topk=1"]["group_cells"]) == ["topk=0.001", "topk=1"]  # the two missing ones, one fit


def test_a_batched_sweep_killed_mid_fit_redoes_that_fit_s_cells(tmp_path):
    cfg = _config(tmp_path, "sweep", [NOISE, TOPK], refine=0)
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-c", "from leakage.cli import main; main()", "sweep", "--config", str(cfg), *TINY]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "runs" / "topk=0.001").exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the group's fit has started: its cells are written when it ends
    proc.wait()
    assert not list((out / "cells").glob("*.json"))
    main(["sweep", "--config", str(cfg), *TINY])
    cells = _cells(out)
    assert sorted(cells) == ["noise=0", "noise=1", "topk=0.001", "topk=1"]
    assert all(c["status"] == "ok" and len(c["group_cells"]) == 4 for c in cells.values())
    assert not list(out.rglob("*.tmp"))


def test_a_cell_whose_defense_fails_on_the_updates_fails_alone_with_its_own_line(tmp_path):
    # secure aggregation of 2 clients with a masked target keeps the updates' shape (batchable), but
    # 3 victims do not split into groups of 2: the cell fails as its own fit does, the others run
    masked = {"name": "secagg", "class_path": "SecureAggregation", "param": "mask_scale", "values": [1.0],
              "init_args": {"clients": 2, "target": "masked"}}
    errors = {}
    for batch in (False, True):
        name = f"batch_{batch}"
        main(["sweep", "--config", str(_config(tmp_path, name, [NOISE, masked], refine=0)), *TINY,
              "--sweep.batch", str(batch).lower()])
        cells = _cells(tmp_path / name)
        assert cells["secagg=1"]["status"] == "failed"
        assert "3 client updates do not split into groups of 2 clients" in cells["secagg=1"]["error"]
        errors[batch] = cells["secagg=1"]["error"]
        assert cells["noise=0"]["status"] == cells["noise=1"]["status"] == "ok"
    assert errors[True] == errors[False]
    assert sorted(cells["noise=0"]["group_cells"]) == ["noise=0", "noise=1"]


def test_secure_aggregation_of_whole_updates_runs_as_its_own_fit(tmp_path):
    # the aggregate of 3 clients is one update of 3 images: it cannot share the victims' axis
    agg = {"name": "secagg", "class_path": "SecureAggregation", "param": "mask_scale", "values": [1.0],
           "init_args": {"clients": 3}}
    main(["sweep", "--config", str(_config(tmp_path, "sweep", [NOISE, agg], refine=0)), *TINY,
          "--model.labels", "bias_count"])
    cells = _cells(tmp_path / "sweep")
    assert cells["secagg=1"]["status"] == "ok" and cells["secagg=1"]["victims"] == 1
    assert "group_cells" not in cells["secagg=1"]
    assert sorted(cells["noise=1"]["group_cells"]) == ["noise=0", "noise=1"]


def test_a_failed_batched_fit_runs_its_cells_one_by_one(tmp_path, capsys, monkeypatch):
    from leakage.sweep import batching

    def broken(self):
        raise RuntimeError("the batched fit broke")

    monkeypatch.setattr(batching.GroupCLI, "before_fit", broken)
    main(["sweep", "--config", str(_config(tmp_path, "sweep", [NOISE], refine=0)), *TINY])
    cells = _cells(tmp_path / "sweep")
    assert all(c["status"] == "ok" and "group_cells" not in c for c in cells.values())
    assert ("leakage sweep: the batched fit of cells noise=0, noise=1 failed (the batched fit broke); running them "
            "one by one") in capsys.readouterr().err


@pytest.mark.parametrize("value", ["maybe", "2"])
def test_sweep_batch_must_be_true_or_false(tmp_path, value):
    cfg = _config(tmp_path, "sweep", [NOISE])
    with pytest.raises(ValueError, match=f"sweep batch must be true or false, got {value if value == '2' else repr(value)}"):
        parse(["--config", str(cfg), "--sweep.batch", value])
    assert parse(["--config", str(cfg), "--sweep.batch", "false"]).cfg["batch"] is False
    assert parse(["--config", str(cfg)]).cfg["batch"] is True


def test_a_batched_sweep_of_tables_shares_one_fit_and_shows_tableak_s_accuracy(tmp_path, capsys):
    """configs/adult_defense_sweep.yaml cut down: the cells of TabLeak on tables (public labels: each cell's
    victims' labels go with its updates) share one fit; the tables, plot and hparams carry TabLeak's accuracy."""
    cfg = yaml.safe_load((CONFIGS / "adult_defense_sweep.yaml").read_text())
    cfg["sweep"].update(output=str(tmp_path / "sweep"), defenses=[{**cfg["sweep"]["defenses"][0], "values": [0.0, 3.0]}],
                        refine=0)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["sweep", "--config", str(path), "--data.num_victims", "2", "--data.batch_size", "2", "--model.dummies.restarts", "2",
          "--trainer.max_steps", "20", "--report.image_every_n_steps", "0"])
    assert "failed" not in capsys.readouterr().err
    out = tmp_path / "sweep"
    cells = _cells(out)
    assert all(sorted(c["group_cells"]) == ["noise=0", "noise=3"] for c in cells.values())
    assert cells["noise=0"]["score"] > cells["noise=3"]["score"] and cells["noise=0"]["kind"] == "tabular"
    md = (out / "results.md").read_text()
    assert "| sigma | label accuracy | accuracy | categorical accuracy | continuous accuracy | attack success rate |" in md
    assert "nan" not in md and "SSIM" not in md and (out / "noise.png").stat().st_size > 0
    assert {"hparam/accuracy", "hparam/success_rate"} <= _tfevent_tags(out / "hparams" / "noise=3")
