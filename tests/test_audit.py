"""The client's audit (leakage.audit): honest built-ins pass, a malicious server's model fails the check that
names its change, the command exits non-zero with a readable table, the Flower mod stops a malicious round
and lets an honest one train, and bad input is one line."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

import leakage
from leakage.api import bundled_images
from leakage.audit import AuditResult, TrapWeights
from leakage.engine.models import build_model
from leakage.federated.server import ImprintServer, TrapWeightServer

MNIST, CIFAR = (1, 28, 28), (3, 32, 32)
#: the checks that judge the model's design (the others measure the batch's exposure)
DESIGN = ("architecture", "replaced layers", "imprint rows", "trap weights", "class-targeted last layer", "transmit-SNR")


def _trained(model, x, y, steps=3, lr=0.1):
    model = copy.deepcopy(model).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("name,shape,data,batch", [("lenet", MNIST, "mnist", 16), ("mlp", MNIST, "mnist", 16),
                                                   ("resnet18", CIFAR, "cifar10", 4)])
def test_honest_built_ins_pass_at_init_and_after_sgd_steps(name, shape, data, batch):
    """The server's model was trained on other clients' data (here: 16 other bundled images), then audited
    on the client's own batch."""
    x, y = bundled_images(data, list(range(batch)))
    init = build_model(name, shape, 10, seed=5)
    elsewhere = bundled_images(data, list(range(10, 18)) if data == "cifar10" else list(range(500, 516)))
    for model, previous in ((init, None), (_trained(init, *elsewhere), init)):
        result = leakage.audit(model, previous=previous, batch=(x, y), architecture=init if previous is None else None)
        assert result.exit_code == 0, str(result)
        for check in DESIGN:  # the weights' design passes; the batch's exposure may warn (below), and a
            assert result[check].verdict in ("pass", "skipped"), str(result)  # batch of 4 may warn of its D-SNR
        assert all(f.verdict != "fail" for f in result.findings)
        if name != "mlp":  # no fully connected first layer: nothing isolated, nothing read
            assert result.verdict == "pass", str(result)


def test_an_honest_mlp_on_a_small_batch_warns_of_what_it_really_gives_back():
    """Exposure is not intent: an honest mlp's first-layer units that fire for one image give it back, and
    the audit says so (a warning, exit status 0) with the count it checked against the batch."""
    x, y = bundled_images("mnist", list(range(16)))
    model = _trained(build_model("mlp", MNIST, 10, seed=5), x, y)
    result = leakage.audit(model, batch=(x, y))
    leak = result["what would leak"]
    assert result.exit_code == 0 and leak.details["isolated"] >= 1
    assert leak.verdict == ("warn" if leak.score >= 0.25 else "pass")


def test_the_imprint_servers_model_fails_and_the_audit_says_what_would_leak():
    x, y = bundled_images("mnist", list(range(64)))
    lenet = build_model("lenet", MNIST, 10)
    sent = ImprintServer(256).for_dataset("mnist").send(lenet, MNIST)
    result = leakage.audit(sent, previous=lenet, batch=(x, y))
    assert result.verdict == "fail" and result.exit_code == 1
    imprint = result["imprint rows"]
    assert imprint.verdict == "fail" and imprint.details["layer"] == "imprint.measure" and imprint.details["rows"] == 256
    arch = result["architecture"]
    assert arch.verdict == "fail" and arch.details["inserted_modules"] == ["imprint.measure"]
    assert arch.details["moved_under"] == ["model."]
    leak = result["what would leak"]
    assert leak.details["attack"] == "ImprintAttack" and leak.details["isolated"] >= 50  # measured 56 of 64
    assert f"this model isolates {leak.details['isolated']} of your 64 samples" in str(result)
    assert result["trap weights"].verdict in ("pass", "skipped")  # the right check fails, not every check


def test_the_trap_weight_servers_model_fails_the_trap_check_and_leaks_what_the_attack_reads():
    x, y = bundled_images("mnist", list(range(32)))
    mlp = build_model("mlp", MNIST, 10)
    sent = TrapWeightServer(trap_scale=0.7).send(mlp, MNIST)
    result = leakage.audit(sent, previous=mlp, batch=(x, y))
    trap = result["trap weights"]
    assert trap.verdict == "fail" and trap.details["layer"] == "net.1" and abs(trap.details["balance"] - 0.7) < 0.02
    assert result["imprint rows"].verdict == "pass"
    # the replaced first layer is named against the previous round
    assert [n for n, _ in result["architecture"].details["replaced"]] == ["net.1.weight"]
    leak = result["what would leak"]
    assert leak.details["attack"] == "TrapWeightAttack" and leak.details["isolated"] > 0
    # every isolated sample is really one of the batch: the read-out's rows, checked by the client
    assert len(leak.details["samples"]) == leak.details["isolated"]


def test_a_class_boosted_by_hand_fails_the_class_targeted_check():
    """Wen et al.'s class fishing multiplies one class's row and bias of the last layer."""
    lenet = build_model("lenet", MNIST, 10)
    for multiplier in (4.0, 10.0):
        fished = copy.deepcopy(lenet)
        with torch.no_grad():
            fished.fc.weight[3] *= multiplier
            fished.fc.bias[3] *= multiplier
        finding = leakage.audit(fished)["class-targeted last layer"]
        assert finding.verdict == "fail" and finding.details["target_class"] == 3
        assert abs(finding.details["norm_ratio"] - multiplier) < 0.3 * multiplier
    assert leakage.audit(lenet)["class-targeted last layer"].verdict == "pass"


def test_the_fishing_servers_model_fails_the_class_check_and_its_d_snr_names_the_fished_image():
    """FishingServer (Wen et al.'s class fishing): the other classes' rows zeroed, their bias the multiplier. On a
    batch holding one image of the target class (image 18 of the bundled MNIST images is the only 3 of 0-19),
    that image's gradient is the whole update below the classifier: D-SNR names it."""
    from leakage.federated.server import FishingServer

    x, y = bundled_images("mnist", list(range(20)))
    assert y.tolist().count(3) == 1 and int(y[18]) == 3
    lenet = build_model("lenet", MNIST, 10)
    sent = FishingServer(target_class=3, multiplier=1000.0).send(lenet, MNIST)
    result = leakage.audit(sent, previous=lenet, batch=(x, y))
    targeted = result["class-targeted last layer"]
    assert targeted.verdict == "fail" and targeted.details["target_class"] == 3
    dsnr = result["D-SNR"]
    assert dsnr.verdict == "fail" and dsnr.details["sample"] == 18 and dsnr.score > 1e6
    assert leakage.audit(lenet, batch=(x, y))["D-SNR"].score < 0.2  # honest: measured 0.08


def test_the_transmit_snr_fails_a_first_layer_that_one_unit_dominates():
    mlp = build_model("mlp", MNIST, 10)
    with torch.no_grad():
        mlp.net[1].weight[7] *= 1000.0
    finding = leakage.audit(mlp)["transmit-SNR"]
    assert finding.verdict == "fail" and finding.details["unit"] == 7 and finding.score > 1


def test_checks_without_what_they_read_are_skipped_not_passed():
    result = leakage.audit(build_model("mlp", MNIST, 10))
    for check in ("architecture", "replaced layers", "D-SNR", "single-sample units", "what would leak"):
        assert result[check].verdict == "skipped", check
    assert result.verdict == "pass"


def test_the_cli_exits_non_zero_with_a_readable_table_and_writes_its_files(tmp_path, capsys):
    from safetensors.torch import save_file

    from leakage.cli import main

    mlp = build_model("mlp", MNIST, 10)
    save_file(mlp.state_dict(), str(tmp_path / "honest.safetensors"))
    save_file(TrapWeightServer().send(mlp, MNIST).state_dict(), str(tmp_path / "trap.safetensors"))
    main(["audit", "--model", "mlp", "--weights", str(tmp_path / "honest.safetensors"), "--batch", "0-63",
          "--out", str(tmp_path / "ok")])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "audit of the received model (leakage.engine.models.MLP): PASS"
    with pytest.raises(SystemExit) as done:
        main(["audit", "--model", "mlp", "--weights", str(tmp_path / "trap.safetensors"), "--previous",
              str(tmp_path / "honest.safetensors"), "--batch", "0-15", "--out", str(tmp_path / "bad")])
    assert done.value.code == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("audit of the received model (leakage.engine.models.MLP): FAIL; failed: replaced layers, trap weights")
    assert lines[1].split() == ["check", "score", "verdict", "reason"]
    row = next(line for line in lines if line.startswith("trap weights"))
    assert row.split()[2:4] == ["0.36", "fail"]
    metrics = json.loads((tmp_path / "bad" / "metrics.json").read_text())
    assert metrics["verdict"] == "fail" and {c["check"] for c in metrics["checks"]} >= {"trap weights", "D-SNR"}
    page = (tmp_path / "bad" / "audit.html").read_text()
    assert "FAIL" in page and "trap weights" in page and "<table>" in page


def test_the_cli_audits_an_inserted_module_from_the_weights_alone(tmp_path, capsys):
    from leakage.cli import main

    sent = ImprintServer(64).for_dataset("mnist").send(build_model("lenet", MNIST, 10), MNIST)
    torch.save(sent.state_dict(), tmp_path / "imprint.pt")
    with pytest.raises(SystemExit) as done:
        main(["audit", "--model", "lenet", "--weights", str(tmp_path / "imprint.pt"), "--batch", "0-7",
              "--out", str(tmp_path / "out")])
    assert done.value.code == 1
    captured = capsys.readouterr()
    assert "failed: architecture, imprint rows" in captured.out.splitlines()[0]
    assert "modules inserted: imprint.measure" in captured.out
    assert "the checks on your batch are skipped" in captured.err


@pytest.mark.parametrize("make,expected", [
    (lambda p: torch.save({"m": build_model("mlp", MNIST, 10)}, p / "w.pt"), "unpickling it could run code"),
    (lambda p: None, "not found"),
    (lambda p: torch.save(build_model("lenet", CIFAR, 10).state_dict(), p / "w.pt"), "reshaped"),
])
def test_bad_weights_are_one_line(tmp_path, capsys, make, expected):
    from leakage.cli import main

    make(tmp_path)
    with pytest.raises(SystemExit) as done:
        main(["audit", "--model", "lenet", "--weights", str(tmp_path / "w.pt"), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    text = captured.err if done.value.code == 2 else captured.out
    assert expected in text
    if done.value.code == 2:
        assert len(captured.err.strip().splitlines()) == 1 and captured.err.startswith("leakage: error: ")


def test_bad_batches_and_settings_are_one_line(tmp_path, capsys):
    from leakage.cli import main

    model = build_model("mlp", MNIST, 10)
    x, y = bundled_images("mnist", [0, 1])
    with pytest.raises(ValueError, match=r"class indices in \[0, 10\)"):
        leakage.audit(model, batch=(x, y + 10))
    with pytest.raises(ValueError, match="batch does not fit"):
        leakage.audit(model, batch=(x, y[:1]))
    with pytest.raises(ValueError, match="cannot take inputs"):
        leakage.audit(model, batch=(torch.rand(2, 3, 32, 32), y))
    with pytest.raises(ValueError, match="warn .* must not exceed fail"):
        TrapWeights(warn=0.5, fail=0.1)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    with pytest.raises(SystemExit) as done:
        main(["audit", "--model", "mlp", "--weights", str(tmp_path / "w.pt"), "--batch", "five"])
    assert done.value.code == 2
    assert capsys.readouterr().err.strip() == ("leakage: error: the batch 'five' is neither bundled indices (0-63, or "
                                               "0,5,9) nor a .safetensors/.pt file")


def test_the_cli_reads_a_batch_file_and_refuses_one_that_does_not_fit(tmp_path, capsys):
    from safetensors.torch import save_file

    from leakage.cli import main

    save_file(build_model("mlp", MNIST, 10).state_dict(), str(tmp_path / "w.safetensors"))
    x, y = bundled_images("mnist", list(range(500, 564)))
    save_file({"x": x.contiguous(), "y": y.contiguous()}, str(tmp_path / "mine.safetensors"))
    save_file({"x": torch.rand(4, 3, 32, 32), "y": y[:4].contiguous()}, str(tmp_path / "cifar.safetensors"))
    args = ["audit", "--model", "mlp", "--weights", str(tmp_path / "w.safetensors"), "--out", str(tmp_path / "out")]
    main(args + ["--batch", str(tmp_path / "mine.safetensors")])
    out = capsys.readouterr().out
    assert "times the other 63 samples' together" in out and out.splitlines()[0].endswith("PASS")
    with pytest.raises(SystemExit) as done:
        main(args + ["--batch", str(tmp_path / "cifar.safetensors")])
    err = capsys.readouterr().err
    assert done.value.code == 2 and len(err.strip().splitlines()) == 1 and "cannot take inputs of shape (3, 32, 32)" in err


def test_the_cli_pins_another_architecture(tmp_path, capsys):
    """--architecture pins a weights file's names and shapes instead of the built-in's: received weights of
    the built-in then differ from the pin, and the check names the reshaped layer."""
    from safetensors.torch import save_file

    from leakage.cli import main

    save_file(build_model("mlp", MNIST, 10).state_dict(), str(tmp_path / "received.safetensors"))
    pinned = build_model("mlp", MNIST, 10)
    pinned.net[1] = torch.nn.Linear(784, 128)
    pinned.net[3] = torch.nn.Linear(128, 10)
    save_file(pinned.state_dict(), str(tmp_path / "pinned.safetensors"))
    with pytest.raises(SystemExit) as done:
        main(["audit", "--model", "mlp", "--weights", str(tmp_path / "received.safetensors"), "--architecture",
              str(tmp_path / "pinned.safetensors"), "--out", str(tmp_path / "out")])
    assert done.value.code == 1
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("architecture"))
    assert "fail" in row and "net.1.weight (256, 784) not (128, 784)" in row


def test_the_result_is_plain_data(tmp_path):
    result = leakage.audit(build_model("lenet", MNIST, 10), batch=bundled_images("mnist", [0, 1, 2, 3]))
    assert isinstance(result, AuditResult)
    paths = result.write(tmp_path)
    data = json.loads(paths["metrics"].read_text())
    assert data["verdict"] == "pass" and len(data["checks"]) == len(result.findings)
    assert data["checks"][0]["check"] == "architecture" and data["checks"][0]["score"] is None  # skipped


@pytest.mark.parametrize("trained_first", [False, True])
def test_trap_weights_too_close_to_symmetric_for_the_weight_check_fail_as_a_replaced_layer(trained_first):
    """Trap weights of scale 0.98 sit inside the honest spread of the rows' balance, but the server threw the
    first layer's previous weights away: against the round the client trained last, that layer fails, named.
    Also when the server trained the model honestly (here 3 SGD steps on other images) before planting them."""
    from leakage.audit import ReplacedLayers

    x, y = bundled_images("mnist", list(range(16)))
    previous = build_model("mlp", MNIST, 10, seed=3)
    base = _trained(previous, *bundled_images("mnist", list(range(500, 532)))) if trained_first else previous
    sent = TrapWeightServer(trap_scale=0.98, seed=1).send(base, MNIST)
    result = leakage.audit(sent, previous=previous, batch=(x, y))
    replaced = result["replaced layers"]
    assert replaced.verdict == "fail" and result.verdict == "fail" and result.exit_code == 1
    assert replaced.details["layer"] == "net.1.weight" and replaced.details["replaced"] == ["net.1.weight"]
    assert replaced.score > 0.95 and abs(replaced.details["cosine"]) < 0.05  # none of the previous layer is left
    assert replaced.reason.startswith("a layer replaced, not trained: 'net.1.weight' dropped")
    assert result["trap weights"].verdict == "pass"  # |ln 0.98| = 0.02: the weights alone do not show it
    assert replaced.score == ReplacedLayers().run(_received(sent, previous)).score


def _received(model, previous):
    from leakage.audit import Received
    from leakage.audit.base import float_state

    return Received(float_state(model.state_dict()), previous=float_state(previous.state_dict()))


@pytest.mark.parametrize("name,lr", [("mlp", 0.1), ("mlp", 1.0), ("lenet", 0.5)])
def test_honest_rounds_keep_their_previous_weights_even_at_high_learning_rates(name, lr):
    """An honest round moves every layer by an update nearly orthogonal to its weights: the share dropped stays
    near 0 however large the step (measured at most 0.10 in the benchmark's zoo)."""
    previous = build_model(name, MNIST, 10, seed=4)
    trained = _trained(previous, *bundled_images("mnist", list(range(500, 564))), steps=5, lr=lr)
    finding = leakage.audit(trained, previous=previous)["replaced layers"]
    assert finding.verdict == "pass", finding.reason
    assert finding.score < 0.2 and finding.details["layers"] == (2 if name == "mlp" else 4)
    assert finding.reason.startswith(f"every layer of {finding.details['layers']} kept its previous weights")


def test_a_re_initialised_convolution_is_named_and_nothing_to_compare_is_skipped():
    lenet = build_model("lenet", MNIST, 10, seed=1)
    swapped = copy.deepcopy(lenet)
    torch.nn.init.kaiming_uniform_(swapped.body[0].weight)  # a fresh draw: the previous filters are gone
    finding = leakage.audit(swapped, previous=lenet)["replaced layers"]
    assert finding.verdict == "fail" and finding.details["replaced"] == ["body.0.weight"]
    assert leakage.audit(lenet, previous=lenet)["replaced layers"].score == 0.0
    # a previous round with no layer of the same name and shape: nothing to read, skipped (never passed)
    other = {"other.weight": torch.ones(3, 3)}
    skipped = leakage.audit(lenet, previous=other)["replaced layers"]
    assert skipped.verdict == "skipped" and "no weight matrix" in skipped.reason
    assert leakage.audit(lenet)["replaced layers"].reason.startswith("no previous round given")


def test_a_layer_that_lost_part_of_its_previous_weights_warns_without_saying_replaced():
    from leakage.audit import ReplacedLayers

    previous = build_model("mlp", MNIST, 10, seed=2)
    shrunk = copy.deepcopy(previous)
    with torch.no_grad():
        shrunk.net[3].weight.mul_(0.3)  # 70% of the classifier's previous weights dropped, the direction kept
    finding = leakage.audit(shrunk, previous=previous, checks=[ReplacedLayers()])["replaced layers"]
    assert finding.verdict == "warn" and abs(finding.score - 0.7) < 1e-6 and finding.details["cosine"] > 0.999
    assert finding.reason.endswith("trained hard, or partly replaced") and "replaced, not trained" not in finding.reason
