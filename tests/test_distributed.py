"""``leakage fit`` sharded over processes (``--trainer.strategy ddp``): the real console command on
2 CPU processes (gloo), compared victim for victim with the 1-process run."""

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
import torch
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.nn.parallel import DistributedDataParallel

from leakage.attacks.gradient_inversion import GradientInversion
from leakage.data.datamodule import VictimDataModule
from leakage.engine.distributed import ShardedDDPStrategy, check_strategy, launched_as_rank_zero, victim_shard
from leakage.fit import TRAINER_DEFAULTS, LeakageCLI

from conftest import CONFIGS, REPO, assert_same_outcome, run_dirs

STEPS = 2
#: bundled MNIST on the fast preset, long enough that the victims converge (SSIM > 0.999): the test that
#: compares reconstructions across processes compares reconstructed victims, not chaotic paths
CONVERGED = ["--data.source.dataset", "mnist", "--trainer.max_steps", "20"]
TWO = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]


def leakage(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The real console command, ``python -m leakage.cli ...``, in its own process."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-m", "leakage.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def fit(cwd: Path, save_dir: Path, *extra: str) -> Path:
    """A short run of the fast preset; its one run folder."""
    leakage(cwd, "fit", "--config", str(CONFIGS / "cifar_fast.yaml"), "--trainer.max_steps", str(STEPS),
            "--trainer.logger.init_args.save_dir", str(save_dir), "--trainer.enable_progress_bar", "false",
            "--report.log_every_n_steps", "1", *extra)
    (run,) = run_dirs(save_dir)
    return run


def rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_same_victims(one: list[dict], two: list[dict]) -> None:
    """Victim for victim, what the docs promise across processes (docs/distributed.md): the same images, labels, status
    and outcome, and SSIM to 1e-3 where reconstructed (:func:`conftest.assert_same_outcome`)."""
    assert [r["indices"] for r in two] == [r["indices"] for r in one]
    assert [r["victim"] for r in two] == [r["victim"] for r in one]
    assert_same_outcome(one, two)


def test_victim_shards_cover_every_victim_once_in_order():
    for victims in range(0, 8):
        for world in range(1, 5):
            shards = [victim_shard(victims, r, world) for r in range(world)]
            assert [v for s in shards for v in s] == list(range(victims))
            assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert list(victim_shard(3, 0, 2)) == [0, 1] and list(victim_shard(3, 1, 2)) == [2]
    assert list(victim_shard(1, 1, 2)) == []
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        victim_shard(3, 2, 2)


def test_rank_zero_is_told_from_the_launchers_environment(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    assert launched_as_rank_zero()
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert launched_as_rank_zero()
    monkeypatch.setenv("NODE_RANK", "1")  # local rank 0 of the second node
    assert not launched_as_rank_zero()


@pytest.mark.parametrize("strategy", ["ddp", "auto"])
def test_ddp_and_several_devices_run_the_sharded_strategy_that_never_wraps_the_module(strategy):
    cli = LeakageCLI(GradientInversion, VictimDataModule, trainer_defaults=TRAINER_DEFAULTS, run=False,
                     args=["--trainer.strategy", strategy, "--trainer.devices", "2", "--trainer.accelerator", "cpu",
                           "--trainer.logger", "false", "--trainer.max_steps", "1"])
    chosen = cli.trainer.strategy
    assert isinstance(chosen, ShardedDDPStrategy) and chosen.num_processes == 2
    chosen.model = cli.model
    chosen.configure_ddp()
    assert chosen.model is cli.model and not isinstance(chosen.model, DistributedDataParallel)
    one = LeakageCLI(GradientInversion, VictimDataModule, trainer_defaults=TRAINER_DEFAULTS, run=False,
                     args=["--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.max_steps", "1"])
    assert isinstance(one.trainer.strategy, SingleDeviceStrategy)


def test_a_strategy_that_would_average_the_dummies_is_refused_in_one_line():
    ddp = DDPStrategy()
    ddp.cluster_environment = LightningEnvironment()
    ddp.cluster_environment.set_world_size(2)
    with pytest.raises(ValueError, match="would average the attack's dummies across processes: use --trainer.strategy ddp"):
        check_strategy(ddp)
    sharded = ShardedDDPStrategy()
    sharded.cluster_environment = LightningEnvironment()
    sharded.cluster_environment.set_world_size(2)
    check_strategy(sharded)


def test_fit_on_two_processes_equals_the_one_process_run_victim_for_victim(tmp_path):
    """3 victims on 2 ranks (2 + 1): the same table, one set of artifacts, every victim's scalars."""
    one = fit(tmp_path, tmp_path / "one", "--data.num_victims", "3", *CONVERGED)
    two = fit(tmp_path, tmp_path / "two", "--data.num_victims", "3", *CONVERGED, *TWO)
    assert all(float(r["ssim"]) >= 0.9 for r in rows(one))  # reconstructed: their SSIMs are compared
    assert_same_victims(rows(one), rows(two))
    # one set of artifacts, only rank 0's: one run folder, nothing written elsewhere
    assert sorted(p.name for p in two.iterdir() if not p.name.startswith("events.")) == sorted(
        ["config.yaml", "gallery.png", "history.png", "hparams.yaml", "metrics.csv", "metrics.json", "metrics.txt",
         "reconstructions.safetensors", "report.html", "schema.json"])
    assert len(list(two.glob("events.*"))) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # nothing else, anywhere
    # rank 0 saved every rank's reconstructions, in the victims' order, as the one process did
    saved_one, saved_two = load_file(one / "reconstructions.safetensors"), load_file(two / "reconstructions.safetensors")
    assert saved_two["recon"].shape == saved_one["recon"].shape and saved_two["recon"].shape[0] == 3
    assert torch.equal(saved_two["labels"], saved_one["labels"]) and torch.equal(saved_two["perm"], saved_one["perm"])
    # TensorBoard: every victim's scalars at every logged step, the last equal to the table
    acc = EventAccumulator(str(two), size_guidance={"scalars": 0})
    acc.Reload()
    ref = EventAccumulator(str(one), size_guidance={"scalars": 0})
    ref.Reload()
    assert acc.Tags()["scalars"] == ref.Tags()["scalars"]
    for v, row in enumerate(rows(two)):
        ssim = acc.Scalars(f"victim_{v:02d}/ssim")
        steps = [e.step for e in ref.Scalars(f"victim_{v:02d}/ssim")]
        assert [e.step for e in ssim] == steps and steps[0] == 1 and len(steps) >= 10
        assert ssim[-1].value == pytest.approx(float(row["ssim"]), abs=1e-6)
        assert [e.step for e in acc.Scalars(f"victim_{v:02d}/loss")] == steps
    assert acc.Scalars("final/reconstructed")[-1].value == ref.Scalars("final/reconstructed")[-1].value
    # the torchrun launch of docs/distributed.md (one node here): torchrun starts the ranks, Lightning joins them
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "leakage.cli", "fit", "--config",
         str(CONFIGS / "cifar_fast.yaml"), "--data.num_victims", "3", *CONVERGED,
         "--trainer.logger.init_args.save_dir", str(tmp_path / "torchrun"), "--trainer.enable_progress_bar", "false",
         "--report.log_every_n_steps", "1", *TWO], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "torchrun")
    assert_same_victims(rows(one), rows(run))


def test_a_rank_without_victims_and_secure_aggregation_before_sharding(tmp_path):
    """Secure aggregation of 2 clients turns 2 updates into 1 aggregate before the victims are
    sharded: rank 1 gets none, and the result is the 1-process run's. Without a logger only rank 0
    makes a run folder."""
    defense = tmp_path / "secagg.yaml"
    defense.write_text("trainer:\n  callbacks:\n    - class_path: leakage.federated.defenses.SecureAggregation\n"
                       "      init_args: {clients: 2, target: aggregate}\n")
    common = ["--config", str(defense), "--data.num_victims", "2", "--model.labels", "bias_count",
              "--trainer.logger", "false"]
    fit_args = ["fit", "--config", str(CONFIGS / "cifar_fast.yaml"), "--trainer.max_steps", str(STEPS),
                "--trainer.enable_progress_bar", "false"]
    leakage(tmp_path, *fit_args, *common, "--trainer.default_root_dir", str(tmp_path / "one"))
    leakage(tmp_path, *fit_args, *common, *TWO, "--trainer.default_root_dir", str(tmp_path / "two"))
    (one,) = run_dirs(tmp_path / "one")
    (two,) = run_dirs(tmp_path / "two")
    a, b = rows(one), rows(two)
    assert len(a) == 1 and a[0]["indices"] == "0 1"
    assert_same_victims(a, b)
    assert (two / "config.yaml").is_file() and (two / "report.html").is_file()


SWEEP = """\
seed_everything: 0
trainer: {max_steps: 2}
model: {model: lenet, labels: idlg, dummies: {init: uniform}, optimizer: {class_path: LBFGS, init_args: {max_iter: 2}}}
data: {source: {class_path: leakage.data.sources.Bundled, init_args: {dataset: mnist}}, num_victims: 3, batch_size: 1}
sweep:
  success_ssim: 0.3
  target_success: 0.1
  refine: 0
  defenses:
    - {name: noise, class_path: GaussianNoise, param: sigma, values: [0.0, 1.0], stronger: larger}
"""


def test_sweep_on_two_processes_resumes_after_a_kill_and_on_one_process(tmp_path):
    """A 2-process sweep killed after its first cell, resumed on 2 processes, then on 1 (nothing is
    run again: the fingerprints leave the process count out): cell for cell the 1-process sweep's
    results, one set of files written by rank 0 alone."""
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    sweep = [sys.executable, "-m", "leakage.cli", "sweep", "--config", "sweep.yaml"]
    leakage(tmp_path, "sweep", "--config", "sweep.yaml", "--sweep.output", "one", "--trainer.accelerator", "cpu")
    # killed (the whole process group: every rank) as soon as its first cell is on disk
    proc = subprocess.Popen([*sweep, "--sweep.output", "two", *TWO], cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cells = tmp_path / "two" / "cells"
    deadline = time.monotonic() + 240
    while not list(cells.glob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = {f.name: f.read_text() for f in cells.glob("*.json")}
    assert len(first) >= 1 and (tmp_path / "two" / "sweep.lock").exists()  # killed before the end
    resumed = leakage(tmp_path, "sweep", "--config", "sweep.yaml", "--sweep.output", "two", *TWO)
    # the cells of the batched group run one by one on 2 processes: said once, and not as a failure
    if len(first) < 2:
        assert resumed.stderr.count("on several processes the cells run one by one") == 1, resumed.stderr[-2000:]
    assert "failed" not in resumed.stderr
    done = {f.name: f.read_text() for f in cells.glob("*.json")}
    assert all(done[name] == text for name, text in first.items())  # completed cells were not run again
    # 1 process (the accelerator stays: results on another one are computed again)
    again = leakage(tmp_path, "sweep", "--config", "sweep.yaml", "--sweep.output", "two", "--trainer.accelerator", "cpu")
    assert {f.name: f.read_text() for f in cells.glob("*.json")} == done and "running it again" not in again.stderr
    ref = {f.name: json.loads(f.read_text()) for f in (tmp_path / "one" / "cells").glob("*.json")}
    got = {name: json.loads(text) for name, text in done.items()}
    assert sorted(got) == sorted(ref) == ["noise=0.json", "noise=1.json"]
    for name, r in ref.items():
        assert got[name]["status"] == r["status"] == "ok" and got[name]["success"] == r["success"]
        assert got[name]["fingerprint"] == r["fingerprint"]
        assert got[name]["ssim"] == pytest.approx(r["ssim"], abs=1e-3)
        # the cell's run folder has every victim, written once
        assert [row["indices"] for row in rows(tmp_path / "two" / "runs" / name[:-5])] == ["0", "1", "2"]
    assert not (tmp_path / "two" / "sweep.lock").exists()
    assert "noise" in (tmp_path / "two" / "results.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "sweep.yaml", "two"]


def test_text_on_two_processes_recovers_every_sentence_as_one_process_does(tmp_path):
    """TAG on text, 3 sentences on 2 ranks (2 + 1): the ranks switch to the discrete search at the same
    step (a rank's relaxation settles on its own: deciding alone would leave the other waiting in a
    collective), and every sentence comes back, in order, as on one process."""
    runs = []
    for name, extra in (("one", []), ("two", TWO)):
        leakage(tmp_path, "fit", "--config", str(CONFIGS / "text_tag.yaml"), "--data.num_victims", "3",
                "--trainer.logger.init_args.save_dir", str(tmp_path / name), "--trainer.enable_progress_bar", "false",
                *extra)
        (run,) = run_dirs(tmp_path / name)
        runs.append(rows(run))
    one, two = runs
    assert [r["exact_sequences"] for r in two] == [r["exact_sequences"] for r in one] == ["1.0"] * 3
    assert [r["rouge1"] for r in two] == [r["rouge1"] for r in one]
