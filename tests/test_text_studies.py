"""Text through the studies: a sweep over batch size and a defense on text writes its tables with
ROUGE, and a text fit's TensorBoard events and report.html hold the true sentences and their
reconstructions (read back)."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from leakage.cli import main

from conftest import CONFIGS, cli_args, run_dirs


pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_text_sweep_writes_its_tables_with_rouge(tmp_path, capsys):
    """The shipped text sweep's token-set study, cut down (B = 2; 8 tokens; 2 updates), and top-k and
    secure aggregation on the same attack: they read the text kind's score (ROUGE-1) and name its records."""
    cfg = yaml.safe_load((CONFIGS / "text_batch_sweep.yaml").read_text())
    study = next(s for s in cfg["sweep"]["studies"] if s["name"] == "tokens_batch")
    cfg["data"]["source"]["init_args"]["seq_len"] = 8
    # Yin et al.'s labels: the token set is what the test is about (weight_count's rounding is slow on text)
    known = {"model.labels": "yin"}
    cfg["sweep"].update(output=str(tmp_path / "sweep"), studies=[dict(study, values=[2], set={**study["set"], **known})],
                        target_success=0.1,
                        refine=0, defenses=[{"name": "topk", "class_path": "TopK", "param": "keep_ratio",
                                             "values": [1e-5], "stronger": "smaller"},
                                            {"name": "secagg", "class_path": "SecureAggregation", "param": "clients",
                                             "values": [2], "stronger": "larger"}])
    cfg.update(attack="token_set", model={**cfg["model"], "labels": "yin"})
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["sweep", "--config", str(path)])
    out = tmp_path / "sweep"
    rows = {r["cell"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert sorted(rows) == ["secagg=2", "tokens_batch.batch_size=2", "topk=1e-05"]
    assert all(r["status"] == "ok" and r["score_label"] == "ROUGE-1" for r in rows.values())
    # undefended, the token set of a batch of 2 is read exactly (precision and recall 1)
    # (secure aggregation of 2 clients: the clients' count, a whole number, reaches the defense as an
    # integer; the aggregate's set is the union of the two sentences' tokens, read exactly)
    for cell in ("tokens_batch.batch_size=2", "secagg=2"):
        assert float(rows[cell]["token_precision"]) == 1.0 and float(rows[cell]["token_recall"]) == 1.0
        assert float(rows[cell]["rouge1"]) == pytest.approx(float(rows[cell]["score"])) and float(rows[cell]["rouge1"]) > 0
    # keeping 1e-5 of the update (a handful of entries) loses most of the set
    assert float(rows["topk=1e-05"]["token_recall"]) < 0.5
    md = (out / "results.md").read_text()
    assert "Attack success: ROUGE-1 >= 0.9" in md and "mean ROUGE-1" in md and "ROUGE-2" in md
    assert "| B | label accuracy | mean ROUGE-1 |" in md and "| keep_ratio |" in md and "| clients |" in md
    page = (out / "report.html").read_text()
    assert "ROUGE-1" in page and "sentences" in page and "images" not in page.split("<body>", 1)[1].split("<h2>", 1)[0]
    cell_page = (out / "runs" / "tokens_batch.batch_size=2" / "report.html").read_text()
    assert "liberty" in cell_page  # the cell's own report: the first bundled sentence
    assert "ROUGE-1" in capsys.readouterr().out


def test_a_text_fits_tensorboard_events_and_report_hold_the_sentences(tmp_path, capsys):
    """TAG on the first bundled sentence (8 tokens; a short budget): the sentence is in the TensorBoard
    text summaries, the scalars and report.html, as the run's own table gives them."""
    main(cli_args(tmp_path, "--config", str(CONFIGS / "text_tag.yaml"), "--trainer.max_steps", "10",
                  "--model.budget.refine_steps", "2", "--report.image_every_n_steps", "0"))
    capsys.readouterr()
    (run,) = run_dirs(tmp_path)
    summary = json.loads((run / "metrics.json").read_text())["summary"]
    # the text kind's own columns, not an image's (no NaN SSIM, PSNR, MSE)
    (row,) = csv.DictReader(open(run / "metrics.csv", newline=""))
    assert list(row) == ["victim", "indices", "true_labels", "recovered_labels", "label_acc", "rouge1", "rouge2",
                         "rougeL", "token_accuracy", "exact_sequences", "token_precision", "token_recall", "grad_l2",
                         "grad_cosine", "final_loss", "best_restart", "status"]
    assert float(row["rouge1"]) == pytest.approx(summary["rouge1_mean"])
    acc = EventAccumulator(str(run), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    texts = [t for t in acc.Tags()["tensors"] if acc.SummaryMetadata(t).plugin_data.plugin_name == "text"]
    assert texts, acc.Tags()
    written = " ".join(v.decode() for t in texts for e in acc.Tensors(t) for v in e.tensor_proto.string_val)
    assert "liberty and justice for all" in written
    scalars = acc.Tags()["scalars"]
    rouge = [t for t in scalars if t.endswith("rouge1")]
    assert rouge, scalars
    final = [t for t in rouge if not t.startswith("victim_")] or rouge
    assert acc.Scalars(final[0])[-1].value == pytest.approx(summary["rouge1_mean"], abs=1e-6)
    html = (run / "report.html").read_text()
    assert "... with liberty and justice for all who" in html and "ROUGE-1" in html
