"""Victim data sources: bundled images, image folders (two layouts), torchvision, gradient files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from leakage.federated.client import client_gradients, save_gradients
from leakage.data.datamodule import VictimDataModule, read_labelled_folder
from leakage.engine.models import build_model

from conftest import ASSETS, SAMPLES, bundled_labels
from leakage.data.sources import Bundled, BundledTable, CSVTable, CapturedGradients, ImageFolder, Source, Torchvision
from leakage.federated.client import Client, FedSGD
from leakage.federated.fedavg import FedAvg
from leakage.federated.server import ImprintServer, TrapWeightServer


@pytest.mark.parametrize("dataset, shape", [("cifar10", (3, 32, 32)), ("mnist", (1, 28, 28))])
def test_bundled_images(dataset, shape):
    dm = VictimDataModule(Bundled(dataset), num_victims=20)
    secret = dm.load_victims()
    assert dm.input_shape == shape and dm.num_classes == 10
    assert secret.images.shape == (20, 1, *shape)
    assert secret.images.dtype == torch.float32
    assert float(secret.images.min()) >= 0.0 and float(secret.images.max()) <= 1.0
    assert float(secret.images.std()) > 0.1  # real pictures, not blanks
    assert secret.labels.shape == (20, 1)
    assert secret.labels[:, 0].tolist() == bundled_labels(dataset)
    assert secret.indices == [[i] for i in range(20)]
    # pixel-exact against the PNG files (MNIST's array: against the sample PNGs it was checked with)
    folder = ASSETS / dataset if dataset == "cifar10" else SAMPLES / dataset
    if not folder.is_dir():
        pytest.skip(f"{folder} is not here to compare with")
    f = sorted(folder.glob(f"{dataset}_07_*.png"))[0]
    arr = np.asarray(Image.open(f).convert("L" if shape[0] == 1 else "RGB"), dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    torch.testing.assert_close(secret.images[7, 0], torch.from_numpy(arr))


def test_the_bundled_mnist_array_holds_the_first_1000_test_images():
    dm = VictimDataModule(Bundled("mnist"), indices=[0, 19, 500, 999])
    secret = dm.load_victims()
    assert secret.images.shape == (4, 1, 1, 28, 28) and secret.labels[:2, 0].tolist() == [7, 4]
    assert all(0 <= int(v) <= 9 for v in secret.labels.flatten())
    assert (secret.images * 255).sub((secret.images * 255).round()).abs().max() < 1e-4  # the original bytes
    big = VictimDataModule(Bundled("mnist"), num_victims=2, batch_size=500).load_victims()
    assert big.images.shape == (2, 500, 1, 28, 28) and big.indices[1][-1] == 999
    assert len({tuple(im.flatten().tolist()) for im in big.images[:, :50].flatten(0, 1)}) == 100  # 100 distinct images


def test_bundled_indices_and_batches():
    dm = VictimDataModule(Bundled("cifar10"), indices=[5, 0, 19, 3], batch_size=2)
    secret = dm.load_victims()
    labels = bundled_labels("cifar10")
    assert secret.images.shape == (2, 2, 3, 32, 32)
    assert secret.indices == [[5, 0], [19, 3]]
    assert secret.labels.tolist() == [[labels[5], labels[0]], [labels[19], labels[3]]]
    full = VictimDataModule(Bundled("cifar10"), num_victims=20).load_victims()
    assert torch.equal(secret.images[1, 0], full.images[19, 0])


def test_prepare_builds_observation_and_secret(lenet_mnist):
    dm = VictimDataModule(Bundled("mnist"), num_victims=3)
    obs = dm.prepare(lenet_mnist)
    assert obs is dm.observation
    assert obs.num_victims == 3 and obs.batch_size == 1
    assert obs.input_shape == (1, 28, 28) and obs.num_classes == 10
    ref = client_gradients(lenet_mnist, dm.secret.images, dm.secret.labels)
    for n in ref:
        assert torch.equal(obs.gradients[n], ref[n])


def _png(path, value, size=(10, 12), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    color = (value, 255 - value, value // 2) if mode == "RGB" else value
    Image.new(mode, size, color).save(path)


def test_folder_with_class_subfolders(tmp_path):
    _png(tmp_path / "cat" / "a.png", 10)
    _png(tmp_path / "cat" / "b.png", 20)
    _png(tmp_path / "dog" / "c.png", 200)
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    dm = VictimDataModule(ImageFolder(folder=str(tmp_path), dataset="cifar10", image_size=16), num_victims=3)
    secret = dm.load_victims()
    assert dm.input_shape == (3, 16, 16)
    assert secret.images.shape == (3, 1, 3, 16, 16)
    assert secret.labels[:, 0].tolist() == [0, 0, 1]  # sorted class folder names
    # a solid colour survives the resize
    torch.testing.assert_close(secret.images[2, 0, :, 5, 5], torch.tensor([200, 55, 100]) / 255.0, atol=1e-6, rtol=0)


def test_flat_folder_with_label_suffix(tmp_path):
    _png(tmp_path / "x_3.png", 30, mode="L")
    _png(tmp_path / "y_1.png", 60, mode="L")
    _png(tmp_path / "z_10.png", 90, mode="L")
    dm = VictimDataModule(ImageFolder(folder=str(tmp_path), dataset="mnist", image_size=8, num_classes=11), indices=[2, 0])
    secret = dm.load_victims()
    assert secret.images.shape == (2, 1, 1, 8, 8)
    assert secret.labels[:, 0].tolist() == [10, 3]  # z_10 and x_3 (sorted names)
    torch.testing.assert_close(secret.images[1, 0].mean(), torch.tensor(30 / 255.0))


def test_folder_rgb_to_gray_and_label_range(tmp_path):
    _png(tmp_path / "a_12.png", 50)
    dm = VictimDataModule(ImageFolder(folder=str(tmp_path), dataset="mnist"))
    with pytest.raises(ValueError, match="label 12 does not fit num_classes=10"):
        dm.load_victims()


def test_flat_file_without_label(tmp_path):
    _png(tmp_path / "a_1.png", 10)
    _png(tmp_path / "holiday.png", 10)
    with pytest.raises(ValueError, match="cannot tell the label of holiday.png"):
        read_labelled_folder(tmp_path, 3, None)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        read_labelled_folder(tmp_path / "missing", 3, None)
    (tmp_path / "a_1.png").write_text("x")
    with pytest.raises(ValueError, match="image folder .*a_1.png is a file, not a folder"):
        read_labelled_folder(tmp_path / "a_1.png", 3, None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        read_labelled_folder(tmp_path / "empty", 3, None)
    with pytest.raises(ValueError, match="an image folder source needs --data.source.folder"):
        ImageFolder("")


def test_folder_index_out_of_range(tmp_path):
    _png(tmp_path / "a_1.png", 10)
    dm = VictimDataModule(ImageFolder(folder=str(tmp_path)), indices=[1])
    with pytest.raises(ValueError, match="index 1 is out of range: the folder data has 1 images"):
        dm.load_victims()


def test_gradient_source_has_no_secret(tmp_path, lenet_mnist):
    src = VictimDataModule(Bundled("mnist"), num_victims=2)
    obs = src.prepare(lenet_mnist)
    path = tmp_path / "g.safetensors"
    save_gradients(obs.gradients, path)
    dm = VictimDataModule(CapturedGradients(dataset="mnist", gradient_file=str(path)))
    got = dm.prepare(lenet_mnist)
    assert dm.secret is None
    assert got.num_victims == 2
    for n in obs.gradients:
        assert torch.equal(got.gradients[n], obs.gradients[n])
    with pytest.raises(ValueError, match="source=gradients has no victim images"):
        dm.load_victims()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Bundled("svhn"), r"^unknown dataset 'svhn'; choose one of cifar10, cifar100, mnist, fashion_mnist$"),
        (lambda: Bundled("cifar100"), "bundles cifar10 and mnist images only.*--data.source Torchvision --data.source.root"),
        (lambda: Bundled("adult"), "adult is a table: use --data.source BundledTable"),
        (lambda: BundledTable("mnist"), r"^unknown dataset 'mnist'; choose one of adult$"),
        (lambda: CapturedGradients(""), "needs --data.source.gradient_file"),
        (lambda: ImageFolder(""), "needs --data.source.folder PATH"),
        (lambda: CSVTable(""), "needs --data.source.path FILE.csv"),
        (lambda: CSVTable("t.csv", categorical_columns="a"), "categorical_columns must be a list of column names"),
        (lambda: CSVTable("t.csv", schema="s.json", schema_from="r.csv"), "give the table's schema one way"),
        (lambda: BundledTable(schema="s.json", continuous_columns=["age"]), "a schema fixes every column's type"),
        (lambda: Torchvision(download="yes"), "download must be true or false"),
        (lambda: Bundled(channels=2), "channels must be 1 or 3"),
        (lambda: ImageFolder("f", num_classes=1), "num_classes must be >= 2"),
        (lambda: ImageFolder("f", num_classes=0), "num_classes must be >= 2"),  # not silently the dataset's 10
        (lambda: Bundled(image_size=0), "image_size must be >= 1, got 0"),
        (lambda: Bundled(image_size=True), "image_size must be an integer, got True"),
        (lambda: FedSGD("training"), r"^unknown client_mode 'training'; choose one of train, eval$"),
        (lambda: FedAvg(local_steps=0), "local_steps must be an integer >= 1"),
        (lambda: FedAvg(local_steps=2, local_epochs=2), "^set local_steps or local_epochs, not both$"),
        (lambda: FedAvg(local_epochs=0), "local_epochs must be an integer >= 1"),
        (lambda: FedAvg(local_lr=float("nan")), "local_lr must be a finite number > 0"),
        (lambda: FedAvg(share="sum"), "unknown share 'sum'"),
        (lambda: ImprintServer(num_bins=1), "the imprint module takes 2 to 4096 bins, got num_bins 1"),
        (lambda: ImprintServer(feature_std=0.0), "feature_std > 0"),
        (lambda: TrapWeightServer(trap_scale=1.5), r"trap_scale must be in \(0, 1\)"),
    ],
)
def test_each_object_checks_its_own_settings_in_one_line(make, match):
    with pytest.raises(ValueError, match=match) as exc:
        make()
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(indices=[0, 1, 2], batch_size=2), "3 indices do not split into victims of batch_size 2"),
        (dict(indices=[]), "0 indices do not split"),
        (dict(indices=[-1]), "indices must be >= 0"),
        (dict(batch_size=0), "batch_size and num_victims must be >= 1"),
        (dict(source=Bundled(image_size=5)),
         "image_size 5 is too small to score the reconstructions: SSIM needs images of at least 6x6"),
        (dict(batch_size="2"), "batch_size must be an integer, got '2'"),
        (dict(num_victims=1.5), "num_victims must be an integer, got 1.5"),
        (dict(indices=[0.5]), "indices must be integers"),
        (dict(source="bundled"), "source must be a Source object of one kind .*, got 'bundled'"),
        (dict(source=Source()), "source must be a Source object of one kind"),
        (dict(client=Client()), "client must be a Client object of one kind"),
        (dict(client=FedAvg(local_batch_size=4), batch_size=2), "local_batch_size 4 is larger than the client's batch"),
        (dict(client=FedAvg(local_batch_size=3), batch_size=4), "local_batch_size 3 does not divide"),
        (dict(source=CapturedGradients("g.safetensors"), num_victims=2), "CapturedGradients does not use --data.num_victims"),
        (dict(source=CapturedGradients("g.safetensors"), indices=[0]), "CapturedGradients does not use --data.indices"),
        (dict(source=CapturedGradients("g.safetensors"), server=TrapWeightServer()),
         "--data.server TrapWeightServer changes the model before the clients compute their updates"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VictimDataModule(**kwargs)


def test_the_defaults_are_bundled_cifar10_fedsgd_and_the_honest_server():
    dm = VictimDataModule()
    assert (dm.source, dm.dataset, dm.input_shape, dm.num_victims, dm.batch_size) == ("bundled", "cifar10", (3, 32, 32), 1, 1)
    assert dm.client is None and dm.client_mode == "train" and not dm.server.malicious


def test_the_imprint_statistics_default_to_the_datasets():
    dm = VictimDataModule(Bundled("mnist"), server=ImprintServer(num_bins=8))
    assert (dm.server.feature_mean, dm.server.feature_std) == (0.1239, 0.0407)
    given = VictimDataModule(Bundled("mnist"), server=ImprintServer(num_bins=8, feature_mean=0.2)).server
    assert (given.feature_mean, given.feature_std) == (0.2, 0.0407)
    assert (ImprintServer().feature_mean, ImprintServer().feature_std) == (0.5, 0.25)  # no dataset: the data range


def test_fedavg_epochs_become_steps_for_the_batch():
    dm = VictimDataModule(Bundled("mnist"), FedAvg(local_epochs=2, local_batch_size=2), batch_size=4)
    assert dm.client.local_steps == 4 and dm.client.local_batch_size == 2


def test_bundled_mnist_takes_image_size_and_channels():
    secret = VictimDataModule(Bundled("mnist", image_size=16, channels=3)).load_victims()
    assert secret.images.shape == (1, 1, 3, 16, 16)


@pytest.mark.parametrize("dataset, shipped", [("cifar10", 20), ("mnist", 1000)])
def test_bundled_index_out_of_range_points_to_torchvision(dataset, shipped):
    dm = VictimDataModule(Bundled(dataset), indices=[3, shipped])
    with pytest.raises(ValueError) as exc:
        dm.load_victims()
    msg = str(exc.value)
    assert f"index {shipped} is not shipped" in msg
    assert "--data.source Torchvision" in msg and "--data.source.root" in msg
    dm = VictimDataModule(Bundled(dataset), num_victims=shipped // 2 + 1, batch_size=2)
    with pytest.raises(ValueError, match=f"index {shipped} is not shipped"):
        dm.load_victims()


@pytest.mark.parametrize("dataset", ["cifar10", "mnist"])
def test_torchvision_missing_root_does_not_download(tmp_path, dataset):
    root = tmp_path / "nothing_here"
    dm = VictimDataModule(Torchvision(dataset, root=str(root)))
    with pytest.raises(ValueError) as exc:
        dm.load_victims()
    msg = str(exc.value)
    assert msg.startswith(f"{dataset} not found under {str(root)!r}")
    assert "--data.source.download true" in msg
    assert "\n" not in msg
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files == []  # nothing was fetched


def test_dataset_names_are_normalised():
    dm = VictimDataModule(Torchvision("Fashion-MNIST"))
    assert dm.dataset == "fashion_mnist" and dm.input_shape == (1, 28, 28)
    dm = VictimDataModule(Torchvision("CIFAR100"))
    assert dm.num_classes == 100


def test_setup_needs_a_target_model():
    dm = VictimDataModule(Bundled("mnist"))
    with pytest.raises(RuntimeError, match="needs a LightningModule with a `target` model"):
        dm.setup("fit")


def test_train_dataloader_is_a_step_counter():
    dm = VictimDataModule()
    it = iter(dm.train_dataloader())
    assert [int(next(it)) for _ in range(3)] == [0, 1, 2]


def test_folder_with_model_of_other_size(tmp_path):
    """image_size sets the input shape the CLI links into the model: a LeNet for 16x16 runs."""
    _png(tmp_path / "a_1.png", 10, size=(40, 30))
    dm = VictimDataModule(ImageFolder(folder=str(tmp_path), dataset="cifar10", image_size=16))
    model = build_model("lenet", dm.input_shape, dm.num_classes)
    obs = dm.prepare(model)
    assert dm.secret.images.shape == (1, 1, 3, 16, 16)
    assert obs.gradients["fc.weight"].shape == (1, 10, 12 * 4 * 4)


def test_smallest_scored_image_size_is_what_ssim_takes():
    """MIN_SCORED_SIZE is the smallest side the report's SSIM accepts (11x11 window, reflect padding)."""
    from leakage.data.datamodule import MIN_SCORED_SIZE
    from leakage.engine.metrics import ssim_per_image

    n = MIN_SCORED_SIZE
    x = torch.rand(1, 3, n, n, generator=torch.Generator().manual_seed(0))
    assert float(ssim_per_image(x, x)[0]) == pytest.approx(1.0)
    with pytest.raises(RuntimeError):
        ssim_per_image(x[..., 1:, 1:], x[..., 1:, 1:])
    assert VictimDataModule(Bundled(image_size=n)).input_shape == (3, n, n)


def test_captured_gradients_may_have_small_inputs():
    """No images, nothing to score: source=gradients takes any input size its model takes."""
    dm = VictimDataModule(CapturedGradients(gradient_file="g.safetensors", image_size=2, num_classes=2))
    assert dm.input_shape == (3, 2, 2) and dm.num_classes == 2


def test_unreadable_image_names_the_file(tmp_path):
    _png(tmp_path / "a_1.png", 10)
    (tmp_path / "b_2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(ValueError, match=r"cannot read image .*b_2\.png: "):
        read_labelled_folder(tmp_path, 3, None)


def test_a_sweep_study_keys_a_server_setting_through_its_init_args():
    import yaml

    from conftest import CONFIGS
    from leakage.sweep.config import set_key

    cfg = yaml.safe_load((CONFIGS / "mnist_imprint.yaml").read_text())
    set_key(cfg, "data.server.init_args.num_bins", 32)  # what a study over the server's bins sets in a cell
    set_key(cfg, "data.source.init_args.dataset", "cifar10")
    dm = VictimDataModule.from_config(cfg["data"])
    assert isinstance(dm.server, ImprintServer) and dm.server.num_bins == 32 and dm.dataset == "cifar10"
    assert dm.server.feature_mean == 0.4734  # the statistics follow the source's dataset
