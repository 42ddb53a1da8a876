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


@pytest.mark.parametrize("dataset, shape", [("cifar10", (3, 32, 32)), ("mnist", (1, 28, 28))])
def test_bundled_images(dataset, shape):
    dm = VictimDataModule(source="bundled", dataset=dataset, num_victims=20)
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
    dm = VictimDataModule(source="bundled", dataset="mnist", indices=[0, 19, 500, 999])
    secret = dm.load_victims()
    assert secret.images.shape == (4, 1, 1, 28, 28) and secret.labels[:2, 0].tolist() == [7, 4]
    assert all(0 <= int(v) <= 9 for v in secret.labels.flatten())
    assert (secret.images * 255).sub((secret.images * 255).round()).abs().max() < 1e-4  # the original bytes
    big = VictimDataModule(source="bundled", dataset="mnist", num_victims=2, batch_size=500).load_victims()
    assert big.images.shape == (2, 500, 1, 28, 28) and big.indices[1][-1] == 999
    assert len({tuple(im.flatten().tolist()) for im in big.images[:, :50].flatten(0, 1)}) == 100  # 100 distinct images


def test_bundled_indices_and_batches():
    dm = VictimDataModule(source="bundled", dataset="cifar10", indices=[5, 0, 19, 3], batch_size=2)
    secret = dm.load_victims()
    labels = bundled_labels("cifar10")
    assert secret.images.shape == (2, 2, 3, 32, 32)
    assert secret.indices == [[5, 0], [19, 3]]
    assert secret.labels.tolist() == [[labels[5], labels[0]], [labels[19], labels[3]]]
    full = VictimDataModule(source="bundled", dataset="cifar10", num_victims=20).load_victims()
    assert torch.equal(secret.images[1, 0], full.images[19, 0])


def test_prepare_builds_observation_and_secret(lenet_mnist):
    dm = VictimDataModule(source="bundled", dataset="mnist", num_victims=3)
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
    dm = VictimDataModule(source="folder", folder=str(tmp_path), dataset="cifar10", image_size=16, num_victims=3)
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
    dm = VictimDataModule(
        source="folder", folder=str(tmp_path), dataset="mnist", image_size=8, num_classes=11, indices=[2, 0]
    )
    secret = dm.load_victims()
    assert secret.images.shape == (2, 1, 1, 8, 8)
    assert secret.labels[:, 0].tolist() == [10, 3]  # z_10 and x_3 (sorted names)
    torch.testing.assert_close(secret.images[1, 0].mean(), torch.tensor(30 / 255.0))


def test_folder_rgb_to_gray_and_label_range(tmp_path):
    _png(tmp_path / "a_12.png", 50)
    dm = VictimDataModule(source="folder", folder=str(tmp_path), dataset="mnist")
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
    with pytest.raises(ValueError, match="source=folder needs --data.folder"):
        VictimDataModule(source="folder")


def test_folder_index_out_of_range(tmp_path):
    _png(tmp_path / "a_1.png", 10)
    dm = VictimDataModule(source="folder", folder=str(tmp_path), indices=[1])
    with pytest.raises(ValueError, match="index 1 is out of range: the folder data has 1 images"):
        dm.load_victims()


def test_gradient_source_has_no_secret(tmp_path, lenet_mnist):
    src = VictimDataModule(source="bundled", dataset="mnist", num_victims=2)
    obs = src.prepare(lenet_mnist)
    path = tmp_path / "g.safetensors"
    save_gradients(obs.gradients, path)
    dm = VictimDataModule(source="gradients", dataset="mnist", gradient_file=str(path))
    got = dm.prepare(lenet_mnist)
    assert dm.secret is None
    assert got.num_victims == 2
    for n in obs.gradients:
        assert torch.equal(got.gradients[n], obs.gradients[n])
    with pytest.raises(ValueError, match="source=gradients has no victim images"):
        dm.load_victims()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dataset="svhn"), "unknown dataset 'svhn'; choose one of cifar10, cifar100, mnist, fashion_mnist"),
        (dict(source="hub"), "unknown data source 'hub'"),
        (dict(dataset="cifar100"), "bundles cifar10 and mnist images only.*--data.source torchvision --data.root"),
        (dict(source="gradients"), "source=gradients needs --data.gradient_file"),
        (dict(indices=[0, 1, 2], batch_size=2), "3 indices do not split into victims of batch_size 2"),
        (dict(indices=[]), "0 indices do not split"),
        (dict(indices=[-1]), "indices must be >= 0"),
        (dict(batch_size=0), "batch_size and num_victims must be >= 1"),
        (dict(channels=2), "channels must be 1 or 3"),
        (dict(num_classes=1), "num_classes must be >= 2"),
        (dict(num_classes=0), "num_classes must be >= 2"),  # not silently the dataset's 10
        (dict(image_size=0), "image_size must be >= 1, got 0"),
        (dict(image_size=5), "image_size 5 is too small to score the reconstructions: SSIM needs images of at least 6x6"),
        (dict(batch_size="2"), "batch_size must be an integer, got '2'"),
        (dict(num_victims=1.5), "num_victims must be an integer, got 1.5"),
        (dict(image_size=True), "image_size must be an integer, got True"),
        (dict(indices=[0.5]), "indices must be integers"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VictimDataModule(**kwargs)


@pytest.mark.parametrize("dataset, shipped", [("cifar10", 20), ("mnist", 1000)])
def test_bundled_index_out_of_range_points_to_torchvision(dataset, shipped):
    dm = VictimDataModule(source="bundled", dataset=dataset, indices=[3, shipped])
    with pytest.raises(ValueError) as exc:
        dm.load_victims()
    msg = str(exc.value)
    assert f"index {shipped} is not shipped" in msg
    assert "--data.source torchvision" in msg and "--data.root" in msg
    dm = VictimDataModule(source="bundled", dataset=dataset, num_victims=shipped // 2 + 1, batch_size=2)
    with pytest.raises(ValueError, match=f"index {shipped} is not shipped"):
        dm.load_victims()


@pytest.mark.parametrize("dataset", ["cifar10", "mnist"])
def test_torchvision_missing_root_does_not_download(tmp_path, dataset):
    root = tmp_path / "nothing_here"
    dm = VictimDataModule(source="torchvision", dataset=dataset, root=str(root))
    with pytest.raises(ValueError) as exc:
        dm.load_victims()
    msg = str(exc.value)
    assert msg.startswith(f"{dataset} not found under {str(root)!r}")
    assert "--data.download true" in msg
    assert "\n" not in msg
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files == []  # nothing was fetched


def test_dataset_names_are_normalised():
    dm = VictimDataModule(source="torchvision", dataset="Fashion-MNIST")
    assert dm.dataset == "fashion_mnist" and dm.input_shape == (1, 28, 28)
    dm = VictimDataModule(source="torchvision", dataset="CIFAR100")
    assert dm.num_classes == 100


def test_setup_needs_a_target_model():
    dm = VictimDataModule(source="bundled", dataset="mnist")
    with pytest.raises(RuntimeError, match="needs a LightningModule with a `target` model"):
        dm.setup("fit")


def test_train_dataloader_is_a_step_counter():
    dm = VictimDataModule()
    it = iter(dm.train_dataloader())
    assert [int(next(it)) for _ in range(3)] == [0, 1, 2]


def test_folder_with_model_of_other_size(tmp_path):
    """image_size sets the input shape the CLI links into the model: a LeNet for 16x16 runs."""
    _png(tmp_path / "a_1.png", 10, size=(40, 30))
    dm = VictimDataModule(source="folder", folder=str(tmp_path), dataset="cifar10", image_size=16)
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
    assert VictimDataModule(source="bundled", image_size=n).input_shape == (3, n, n)


def test_captured_gradients_may_have_small_inputs():
    """No images, nothing to score: source=gradients takes any input size its model takes."""
    dm = VictimDataModule(source="gradients", gradient_file="g.safetensors", image_size=2, num_classes=2)
    assert dm.input_shape == (3, 2, 2) and dm.num_classes == 2


def test_unreadable_image_names_the_file(tmp_path):
    _png(tmp_path / "a_1.png", 10)
    (tmp_path / "b_2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(ValueError, match=r"cannot read image .*b_2\.png: "):
        read_labelled_folder(tmp_path, 3, None)
