"""The dashboards a run writes, read back as a researcher's tools would: TensorBoard's event files
(overview layout, images, summary card, HPARAMS) and ``report.html`` (parsed with ``html.parser``)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import metadata as hp_metadata

from leakage.cli import main
from leakage.reporting.dashboard import gallery_slots

from conftest import CONFIGS, cli_args, run_dirs
from htmlpage import embedded_pngs, read_page

STEPS = 40


@pytest.fixture(scope="module")
def fit_run(tmp_path_factory):
    """A 40-step run of the fast preset on 3 MNIST images, with a defense (L-BFGS kept short; the
    preset's stopping rule off, so the run takes all its steps)."""
    save_dir = tmp_path_factory.mktemp("dash_run")
    defense = save_dir / "defense.yaml"
    defense.write_text("trainer:\n  callbacks:\n    - class_path: leakage.federated.defenses.NormClip\n"
                       "      init_args: {max_norm: 1000.0}\n")
    args = cli_args(save_dir, "--config", str(CONFIGS / "cifar_fast.yaml"), "--config", str(defense),
                    "--data.source.dataset", "mnist", "--data.num_victims", "3", "--model.optimizer.max_iter", "2",
                    "--trainer.max_steps", str(STEPS), "--model.budget.stall_steps", "0", "--model.budget.stall_improvement", "0",
                    "--model.budget.stop_relative", "0")
    with contextlib.redirect_stdout(io.StringIO()):
        main(args)
    (run,) = run_dirs(save_dir)
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return run, acc, json.loads((run / "metrics.json").read_text())


def test_overview_layout_draws_every_victim_in_one_chart_per_metric(fit_run):
    run, acc, report = fit_run
    scalars = acc.Tags()["scalars"]
    assert not {"epoch", "hp_metric"} & set(scalars)
    layout = layout_pb2.Layout()
    layout.ParseFromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    (overview,) = layout.category
    assert overview.title == "overview"
    charts = {c.title: list(c.multiline.tag) for c in overview.chart}
    assert "victims reconstructed (SSIM >= 0.9), of 3" in charts

    def matching(title):
        (regex,) = next(tags for t, tags in charts.items() if t.startswith(title))
        return sorted(t for t in scalars if re.search(regex, t))

    assert matching("victims reconstructed") == ["attack/reconstructed"]
    assert matching("median matching loss") == ["attack/log10_median_loss"]
    for title, metric in (("matching loss of every victim", "log10_loss"), ("SSIM of every victim", "ssim"),
                          ("PSNR", "psnr"), ("MSE", "log10_mse")):
        assert matching(title) == [f"victim_{v:02d}/{metric}" for v in range(3)], title
    # the loss charts are log10 of the logged losses, at the same steps
    for v in range(3):
        loss, log = acc.Scalars(f"victim_{v:02d}/loss"), acc.Scalars(f"victim_{v:02d}/log10_loss")
        assert [e.step for e in loss] == [1, 10, 20, 30, 40] == [e.step for e in log]
        for a, b in zip(loss, log):
            assert b.value == pytest.approx(math.log10(a.value), abs=1e-4)
    # the count over the attack ends at the report's own count of reconstructed victims
    counts = acc.Scalars("attack/reconstructed")
    assert [e.step for e in counts] == [1, 10, 20, 30, 40]
    assert counts[-1].value == report["summary"]["success"] and 0 <= counts[0].value <= 3
    finals = [r["final_loss"] for r in report["victims"]]
    assert acc.Scalars("attack/median_loss")[-1].value == pytest.approx(sorted(finals)[1], rel=1e-5)


def test_final_scalars_say_what_they_count(fit_run):
    _, acc, report = fit_run
    s = report["summary"]
    last = {t: acc.Scalars(t)[-1] for t in acc.Tags()["scalars"] if t.startswith("final/")}
    assert all(e.step == STEPS for e in last.values())
    assert last["final/reconstructed"].value == s["success"]
    assert last["final/not_reconstructed"].value == s["victims"] - s["success"]
    assert last["final/numerically_failed"].value == s["failed"] == 0
    assert "final/success" not in last and "final/failed" not in last


def test_gallery_and_history_images_at_the_first_and_last_step(fit_run):
    run, acc, _ = fit_run
    for tag in ("gallery", "history"):
        images = acc.Images(tag)
        assert [e.step for e in images] == [1, 20, STEPS], tag  # first step, every 20, the end
        for e in (images[0], images[-1]):
            with Image.open(io.BytesIO(e.encoded_image_string)) as img:
                assert img.size[0] >= 300 and img.size[1] >= 250, (tag, img.size)
    # the end's gallery is the run's gallery.png
    with Image.open(io.BytesIO(acc.Images("gallery")[-1].encoded_image_string)) as tb, \
            Image.open(run / "gallery.png") as png:
        assert tb.size == png.size
        assert list(tb.convert("RGB").getdata()) == list(png.convert("RGB").getdata())


def test_summary_card_holds_the_per_victim_table(fit_run):
    _, acc, report = fit_run
    (event,) = acc.Tensors("summary/text_summary")
    text = event.tensor_proto.string_val[0].decode()
    s = report["summary"]
    assert text.splitlines()[0] == "**Threat model: honest-but-curious server.**"
    assert f"{s['success']}/3 victims reconstructed" in text
    rows = [line for line in text.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) == 3
    for v, row in zip(report["victims"], rows):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == str(v["victim"]) and cells[1] == str(v["indices"][0])
        assert float(cells[4]) == pytest.approx(v["ssim"], abs=1e-3)
        assert cells[-1] == ("reconstructed" if v["ssim"] >= 0.9 else "not reconstructed")
    assert "norm_clip(max_norm=1000.0)" in text


def test_hparams_entry_has_the_attack_settings_and_its_outcome(fit_run):
    run, acc, report = fit_run
    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(run.parent.parent))
    mux.Reload()
    content = mux.PluginRunToTagToContent(hp_metadata.PLUGIN_NAME)
    (tags,) = content.values()
    experiment = hp_metadata.parse_experiment_plugin_data(tags[hp_metadata.EXPERIMENT_TAG])
    names = [h.name for h in experiment.hparam_infos]
    assert {"model", "distance", "optimizer", "steps", "labels", "restarts", "defenses", "dataset"} <= set(names)
    assert not [n for n in names if n.startswith("_")]  # no _instantiator
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert {"final/reconstructed", "final/not_reconstructed", "final/numerically_failed", "final/ssim_mean"} <= metrics
    assert {"final/reconstructed", "final/not_reconstructed", "final/ssim_mean"} <= set(acc.Tags()["scalars"])
    start = hp_metadata.parse_session_start_info_plugin_data(tags[hp_metadata.SESSION_START_INFO_TAG])
    values = {k: (v.string_value or v.number_value) for k, v in start.hparams.items()}
    assert values["model"] == "lenet" and values["optimizer"] == "lbfgs" and values["labels"] == "idlg"
    assert values["steps"] == STEPS and values["dataset"] == "mnist" and values["victims"] == 3
    assert values["defenses"] == "norm_clip(max_norm=1000.0)"
    assert acc.Scalars("final/reconstructed")[-1].value == report["summary"]["success"]


def test_report_html_is_one_self_contained_page(fit_run):
    run, _, report = fit_run
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html and "<script" not in html
    page = read_page(run / "report.html")
    text = " ".join(page.text)
    assert "honest-but-curious server" in text  # the threat model
    assert f"{report['summary']['success']}/3 victims reconstructed" in text
    images = embedded_pngs(page)
    assert len(images) == 2  # the gallery and the history
    with Image.open(run / "gallery.png") as gallery:
        assert images[0].size == gallery.size
    header = next(r for r in page.rows if r[:2] == ["victim", "indices"])
    body = [r for r in page.rows if len(r) == len(header) and r[0].isdigit()]
    assert [int(r[0]) for r in body] == [0, 1, 2]  # one row per victim
    for r, v in zip(body, report["victims"]):
        assert r[1] == str(v["indices"][0]) and float(r[header.index("SSIM")]) == pytest.approx(v["ssim"], abs=1e-3)
    assert page.terms["model"] == "lenet" and page.terms["steps"] == str(STEPS)
    assert page.terms["defenses"] == "norm_clip(max_norm=1000.0)"


@pytest.mark.parametrize("victims,batch,expect_cols,expect_blocks", [
    (20, 1, 10, 2), (3, 1, 3, 1), (5, 4, 8, 3), (2, 16, 10, 4), (1, 10, 10, 1),
])
def test_gallery_grid_keeps_an_update_together(victims, batch, expect_cols, expect_blocks):
    slots, blocks, cols = gallery_slots(victims, batch)
    assert (cols, blocks) == (expect_cols, expect_blocks)
    assert len(set(slots)) == victims * batch and all(c < cols <= 10 for _, c in slots)
    for v in range(victims):  # an update's images side by side, in one block when it fits in a row
        mine = slots[v * batch:(v + 1) * batch]
        if batch <= 10:
            assert len({blk for blk, _ in mine}) == 1
            assert [c for _, c in mine] == list(range(mine[0][1], mine[0][1] + batch))


def test_logger_leaves_out_epoch_and_hp_metric(tmp_path):
    from leakage.reporting.loggers import TensorBoardLogger

    logger = TensorBoardLogger(str(tmp_path), name="x", version=0)
    logger.log_hyperparams({"lr": 1.0})
    logger.log_metrics({"epoch": 0, "attack/x": 1.5}, step=3)
    logger.finalize("success")
    acc = EventAccumulator(logger.log_dir)
    acc.Reload()
    assert acc.Tags()["scalars"] == ["attack/x"] and acc.Scalars("attack/x")[0].value == 1.5
    assert not acc.Tags()["tensors"]  # no HPARAMS entry of the raw arguments
    assert "lr: 1.0" in (tmp_path / "x" / "version_0" / "hparams.yaml").read_text()


def test_a_config_naming_lightnings_logger_gets_leakages(tmp_path):
    from leakage.attacks.gradient_inversion import GradientInversion
    from leakage.data.datamodule import VictimDataModule
    from leakage.fit import TRAINER_DEFAULTS, LeakageCLI
    from leakage.reporting.loggers import TensorBoardLogger

    cfg = tmp_path / "old.yaml"
    cfg.write_text("trainer:\n  logger:\n    class_path: lightning.pytorch.loggers.TensorBoardLogger\n"
                   f"    init_args: {{save_dir: {tmp_path}, name: old, default_hp_metric: true}}\n")
    cli = LeakageCLI(GradientInversion, VictimDataModule, trainer_defaults=TRAINER_DEFAULTS, run=False,
                     args=["--config", str(cfg), "--trainer.max_steps", "1"])
    assert type(cli.trainer.logger) is TensorBoardLogger
    assert cli.trainer.logger._default_hp_metric is False and cli.trainer.logger.name == "old"
