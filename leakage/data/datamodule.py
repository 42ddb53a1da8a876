"""Victim data and the client's shared gradients, as a LightningDataModule.

The module keeps two things apart (both plain data, :mod:`leakage.records`):

- :class:`~leakage.records.Observation`: what the attacker sees (the shared gradients and public metadata);
- :class:`~leakage.records.Secret`: the victims' images and labels, read only by metrics and galleries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from http.client import HTTPException
from importlib import resources
from pathlib import Path
from typing import Iterator, Literal, Optional, Sequence

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset
from torchvision import datasets, transforms

from leakage.federated.capture import check_settings, is_capture, load_global_weights, read_capture
from leakage.federated.client import CLIENT_MODES, client_gradients, load_gradients, validate_gradients
from leakage.data.csvtable import drop_nonfinite, numeric_columns, read_csv
from leakage.data.kinds import DataKind, ImageKind, TabularKind
from leakage.data.tables import TableSchema, read_schema
from leakage.federated.fedavg import SHARES, FedAvgClient, client_updates, epochs_to_steps
from leakage.data.imagefolder import read_labelled_folder
from leakage.engine.seeding import position_key, update_key
from leakage.federated.server import HONEST, PUBLIC_LABELS, Server, make_server
from leakage.records import Observation, Secret

#: name -> (input shape, classes, torchvision class, shipped in the package)
DATASETS: dict[str, tuple[tuple[int, int, int], int, str]] = {
    "cifar10": ((3, 32, 32), 10, "CIFAR10"),
    "cifar100": ((3, 32, 32), 100, "CIFAR100"),
    "mnist": ((1, 28, 28), 10, "MNIST"),
    "fashion_mnist": ((1, 28, 28), 10, "FashionMNIST"),
}
BUNDLED = ("cifar10", "mnist")
#: bundled image sets stored as one array file under leakage/assets/<dataset>/ (uint8 ``images``
#: ``[N, H, W]`` or ``[N, H, W, C]`` and ``labels`` ``[N]``, test-split indices 0 to N-1); the others
#: are PNG folders read by :func:`~leakage.data.imagefolder.read_labelled_folder`
BUNDLED_ARRAYS = {"mnist": "mnist_test_0_999.npz"}
#: bundled tables: name -> (file under leakage/assets/tabular, label column)
TABLES = {"adult": ("adult_test_0_999.csv", "income")}
SOURCES = ("bundled", "torchvision", "folder", "gradients", "csv")
PROTOCOLS = ("fedsgd", "fedavg")
_VICTIM_DATA = tuple(s for s in SOURCES if s != "gradients")  # sources whose victims are picked by index
#: settings that only some sources read: name -> (default, the sources that read it, why);
#: any other value with another source is refused rather than silently ignored
SOURCE_SETTINGS = {
    "root": ("data", ("torchvision",), "only torchvision datasets are read from a root folder"),
    "download": (False, ("torchvision",), "only torchvision datasets are downloaded"),
    "folder": (None, ("folder",), "only source=folder reads an image folder"),
    "gradient_file": (None, ("gradients",), "only source=gradients reads a gradient file"),
    "path": (None, ("csv",), "only source=csv reads a CSV file"),
    "label_column": (None, ("csv",), "only source=csv names the label column (a bundled table has its own)"),
    "categorical_columns": (None, ("csv",), "only source=csv names its categorical columns"),
    "continuous_columns": (None, ("csv",), "only source=csv names its continuous columns"),
    "indices": (None, _VICTIM_DATA, "every update in the gradient file is a victim; there are no images to pick"),
    "num_victims": (1, _VICTIM_DATA, "every update in the gradient file is a victim; there are no images to count"),
}
#: smallest image side the report can score: SSIM's 11x11 Gaussian window is reflect-padded by 5
#: pixels, which needs more than 5 pixels per side (:func:`leakage.engine.metrics.ssim_per_image`)
MIN_SCORED_SIZE = 6


@dataclass
class Table:
    """A table source: its kind (the public schema) and its complete records as read, encoded only
    when picked (:meth:`encode`): a large table is not held densely."""

    kind: TabularKind
    header: list[str]
    rows: list
    name: str

    def __len__(self) -> int:
        return len(self.rows)

    def encode(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Records ``indices`` encoded ``[N, D]`` and their labels ``[N]``."""
        indices = list(indices)
        return self.kind.schema.encode(self.header, [self.rows[i] for i in indices], source=self.name, numbers=indices)


class _Steps(IterableDataset):
    """One item per attack iteration: the attack's data is the observation, not a stream."""

    def __iter__(self) -> Iterator[int]:
        step = 0
        while True:
            yield step
            step += 1


def bundled_array(dataset: str) -> tuple[Tensor, Tensor]:
    """A bundled image set of :data:`BUNDLED_ARRAYS`: images ``[N, C, H, W]`` in [0, 1] and labels
    ``[N]``. Read with ``allow_pickle=False``: an array file never runs code."""
    path = resources.files("leakage") / "assets" / dataset / BUNDLED_ARRAYS[dataset]
    with resources.as_file(path) as file, np.load(file, allow_pickle=False) as arrays:
        images = torch.from_numpy(np.array(arrays["images"], dtype=np.uint8))
        labels = torch.from_numpy(np.array(arrays["labels"], dtype=np.int64))
    images = images[:, None] if images.dim() == 3 else images.permute(0, 3, 1, 2)
    return images.float().div(255), labels


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _dataset_key(name: str) -> str:
    key = name.lower().replace("-", "_")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return key


class VictimDataModule(pl.LightningDataModule):
    """Victims and the gradients their client shares.

    Args:
        source: ``bundled`` (the first 20 CIFAR-10 and the first 1,000 MNIST test images, and the
            first 1,000 Adult test records, shipped in the package), ``torchvision`` (a full dataset under ``root``),
            ``folder`` (your own images), ``csv`` (your own table, ``path``) or ``gradients``
            (updates you captured, from ``gradient_file``; no victim data).
        dataset: ``cifar10``, ``cifar100``, ``mnist``, ``fashion_mnist`` or ``adult`` (a table);
            sets the input shape and class count (for ``folder`` and ``gradients`` too, unless
            overridden below).
        path: the CSV file for ``source=csv`` (a header row; records with a missing value, ``?``
            or empty, are left out and counted).
        label_column: a table's label column (default: ``income`` when ``dataset`` is ``adult``,
            else the last column).
        categorical_columns: columns read as categorical besides those inferred (inferred: a column
            holding a value that is not a number, or whole numbers with at most 10 distinct values
            each seen 5 times on average, such as codes 1-4).
        continuous_columns: columns read as continuous although inferred categorical (numbers only).
        schema: a table's public encoding as JSON (the ``schema.json`` of an earlier run, its
            ``schema`` entry).
        schema_from: a public reference table (CSV, the same columns) the schema is inferred from
            (categories, means, standard deviations, bounds); with neither this nor ``schema`` it is
            inferred from the attacked table itself, victims included (a warning says so). The
            run's ``schema.json`` records which (``origin``).
        standardize_onehot: a table's one-hot columns standardised too, ``(onehot - frequency) /
            std``, the frequencies of its complete records (TabLeak's encoding: its model sees
            standardised one-hot columns); stored in the schema. Default (None): plain one-hot for a
            schema built here; with ``schema`` the schema's encoding, which a True or False must match.
        public_labels: the victims' labels are public (the attack's ``labels: known``; TabLeak's
            setting).
        root: where torchvision datasets live.
        download: let torchvision download the dataset into ``root`` (needs the internet).
        folder: the image folder for ``source=folder``.
        image_size: resize folder images to this square size (default: the dataset's).
        channels: 1 or 3 channels for folder images (default: the dataset's).
        num_classes: override the class count (folder images, custom gradient files).
        indices: test-split indices of the victims' images, grouped into batches of
            ``batch_size``; when unset, the first ``num_victims * batch_size`` images.
        num_victims: how many victims (client updates) when ``indices`` is unset.
        batch_size: images in one client update.
        gradient_file: ``.safetensors`` or ``.pt`` file of captured gradients for ``source=gradients``,
            or a capture file of :mod:`leakage.federated.capture` (a FedAvg update with the global weights it
            started from: the weights are loaded into the target model).
        protocol: the client protocol: ``fedsgd`` (one gradient of the batch's mean loss) or
            ``fedavg`` (local SGD steps; the settings below, public to the attacker).
        local_steps: FedAvg: SGD steps per update.
        local_epochs: FedAvg: passes over the batch instead of ``local_steps``
            (``local_epochs x batch_size / local_batch_size`` steps).
        local_lr: FedAvg: the client's SGD learning rate.
        local_batch_size: FedAvg: images per mini-batch (a divisor of ``batch_size``); None: the
            whole batch.
        shuffle: FedAvg: a fresh seeded order of the batch every local epoch.
        shuffle_seed: FedAvg: the public seed of the mini-batch order (with each update's key).
        share: FedAvg: ``delta`` (``w_K - w_0``) or ``pseudo_gradient`` (``(w_0 - w_K) / local_lr``).
        client_mode: how the client runs the model for its update: ``train`` (the default, what FL
            clients do: BatchNorm normalises with the batch's own statistics; dropout off) or
            ``eval`` (running statistics). Public: the attack simulates the same mode. Models without
            BatchNorm give the same update either way.
        server: the threat model (:mod:`leakage.federated.server`): ``honest`` (honest-but-curious: the model
            is sent as it is), or a malicious server that changes the model before the clients
            compute their updates: ``imprint`` (Robbing the Fed's imprint module at the input) or
            ``trap_weights`` (trap weights in a fully connected first layer).
        num_bins: ``imprint``: the module's bins (default 64).
        feature_mean, feature_std: ``imprint``: the public Gaussian of the mean value of one input
            whose quantiles cut the bins (default: the dataset's, :data:`leakage.federated.server.FEATURE_STATISTICS`).
        trap_scale: ``trap_weights``: the scale, in (0, 1), of each row's positive weights (default 0.7).

    A setting the chosen source does not read (:data:`SOURCE_SETTINGS`: ``root`` and ``download``
    but with ``torchvision``, ``folder``, ``gradient_file``, and ``indices`` / ``num_victims`` with
    ``gradients``) is refused, not ignored.
    """

    def __init__(
        self,
        source: Literal["bundled", "torchvision", "folder", "gradients", "csv"] = "bundled",
        dataset: str = "cifar10",
        path: Optional[str] = None,
        label_column: Optional[str] = None,
        categorical_columns: Optional[list[str]] = None,
        continuous_columns: Optional[list[str]] = None,
        schema: Optional[str] = None,
        schema_from: Optional[str] = None,
        standardize_onehot: Optional[bool] = None,
        public_labels: bool = False,
        root: str = "data",
        download: bool = False,
        folder: Optional[str] = None,
        image_size: Optional[int] = None,
        channels: Optional[int] = None,
        num_classes: Optional[int] = None,
        indices: Optional[list[int]] = None,
        num_victims: int = 1,
        batch_size: int = 1,
        gradient_file: Optional[str] = None,
        protocol: Literal["fedsgd", "fedavg"] = "fedsgd",
        local_steps: int = 1,
        local_epochs: Optional[int] = None,
        local_lr: float = 0.1,
        local_batch_size: Optional[int] = None,
        shuffle: bool = True,
        shuffle_seed: int = 0,
        share: Literal["delta", "pseudo_gradient"] = "delta",
        client_mode: Literal["train", "eval"] = "train",
        server: Literal["honest", "imprint", "trap_weights"] = "honest",
        num_bins: Optional[int] = None,
        feature_mean: Optional[float] = None,
        feature_std: Optional[float] = None,
        trap_scale: Optional[float] = None,
    ) -> None:
        super().__init__()
        if client_mode not in CLIENT_MODES:
            raise ValueError(f"unknown client_mode {client_mode!r}; choose one of {', '.join(CLIENT_MODES)}")
        self.client_mode = client_mode
        if source not in SOURCES:
            raise ValueError(f"unknown data source {source!r}; choose one of {', '.join(SOURCES)}")
        self.public_labels = public_labels
        self.table = self._table(source, dataset, path, label_column, categorical_columns, schema, standardize_onehot,
                                 schema_from, continuous_columns)
        self.dataset = dataset.lower() if self.table is not None else _dataset_key(dataset)
        #: the data's name in reports, HPARAMS and metrics: the CSV file's name for source=csv, the
        #: captured update's file for a captured table's update, else the dataset
        self.data_name = (Path(path).name if source == "csv" else
                          Path(gradient_file).name if source == "gradients" and self.table is not None and gradient_file
                          else self.dataset)
        if source == "bundled" and self.dataset not in BUNDLED and self.table is None:
            raise ValueError(
                f"the package bundles {' and '.join(BUNDLED)} images only; for {self.dataset} use "
                f"--data.source torchvision --data.root PATH (add --data.download true to fetch it)"
            )
        if source == "folder" and not folder:
            raise ValueError("source=folder needs --data.folder PATH")
        if source == "gradients" and not gradient_file:
            raise ValueError("source=gradients needs --data.gradient_file PATH (.safetensors or .pt)")
        for name, value in (("batch_size", batch_size), ("num_victims", num_victims), ("image_size", image_size),
                            ("channels", channels), ("num_classes", num_classes)):
            if value is not None and not _is_int(value):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if batch_size < 1 or num_victims < 1:
            raise ValueError(f"batch_size and num_victims must be >= 1, got {batch_size} and {num_victims}")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (a classifier tells two classes or more apart), got {num_classes}")
        if indices is not None:
            if not all(_is_int(i) for i in indices):
                raise ValueError(f"indices must be integers, got {indices}")
            if len(indices) == 0 or len(indices) % batch_size:
                raise ValueError(
                    f"{len(indices)} indices do not split into victims of batch_size {batch_size}"
                )
            if any(i < 0 for i in indices):
                raise ValueError(f"indices must be >= 0, got {indices}")
        arguments = locals()  # every setting SOURCE_SETTINGS names is an argument of this __init__
        given = {name: arguments[name] for name in SOURCE_SETTINGS}
        for name, (default, users, reason) in SOURCE_SETTINGS.items():
            if source not in users and given[name] != default:
                raise ValueError(f"source={source} does not use --data.{name} ({reason}): "
                                 f"leave it at its default ({default})")
        self.source = source
        self.root = root
        self.download = download
        self.folder = folder
        self.indices = list(indices) if indices is not None else None
        self.num_victims = num_victims
        self.batch_size = batch_size
        self.gradient_file = gradient_file
        self.observation: Optional[Observation] = None
        self.secret: Optional[Secret] = None
        self.client = self._client(protocol, local_steps, local_epochs, local_lr, local_batch_size, shuffle,
                                   shuffle_seed, share)
        if server != "honest" and source == "gradients":
            raise ValueError(f"--data.server {server} changes the model before the clients compute their updates: "
                             "it needs the victims' data, not captured gradients")
        self.server = make_server(server, self.dataset, num_bins, feature_mean, feature_std, trap_scale)
        if self.table is not None:
            kind = self.table.kind
            self.input_shape = kind.sample_shape
            self.num_classes = len(kind.schema.classes)
            return
        shape, classes, _ = DATASETS[self.dataset]
        c = channels or shape[0]
        hw = (image_size, image_size) if image_size is not None else shape[1:]
        if source != "gradients" and min(hw) < MIN_SCORED_SIZE:
            raise ValueError(
                f"image_size {image_size} is too small to score the reconstructions: SSIM needs images of at least "
                f"{MIN_SCORED_SIZE}x{MIN_SCORED_SIZE} pixels"
            )
        self.input_shape: tuple[int, int, int] = (c, *hw)
        self.num_classes: int = classes if num_classes is None else num_classes

    def _table(self, source, dataset, path, label_column, categorical_columns, schema, standardize_onehot=None,
               schema_from=None, continuous_columns=None) -> Optional[Table]:
        """A table source's kind (its schema, and where it came from) and its complete records, or None
        for images."""

        def given_schema() -> TableSchema:
            table_schema = read_schema(schema)
            if standardize_onehot is not None and standardize_onehot != table_schema.standardized_onehot:
                raise ValueError(f"standardize_onehot is {str(standardize_onehot).lower()} but the schema {schema} "
                                 f"encodes {'standardised' if table_schema.standardized_onehot else 'plain'} one-hot "
                                 "columns (--data.standardize_onehot null uses the schema's encoding)")
            if label_column is not None and label_column != table_schema.label:
                raise ValueError(f"--data.label_column {label_column} differs from the schema's label column "
                                 f"{table_schema.label!r}")
            table_schema.origin = f"schema file {schema}" + (f" ({table_schema.origin})" if table_schema.origin else "")
            return table_schema

        def inferred(where: Path, origin: str) -> tuple[TableSchema, list[str], list, int]:
            header, rows, dropped = read_csv(where)
            numeric = [c for c in numeric_columns(header, rows) if c not in (categorical_columns or ())]
            rows, note = drop_nonfinite(header, rows, numeric, source=where.name)
            if note:
                rank_zero_warn(note)
            label = label_column if label_column is not None else default_label
            table_schema = TableSchema.infer(header, rows, label, categorical_columns, bool(standardize_onehot),
                                             continuous_columns, origin)
            rank_zero_info(f"schema inferred from {where.name}: {table_schema.summary}")
            return table_schema, header, rows, dropped

        if schema is not None and schema_from is not None:
            raise ValueError("give the table's schema one way: --data.schema FILE.json or --data.schema_from FILE.csv")
        if schema is not None and (categorical_columns or continuous_columns):
            raise ValueError("--data.schema fixes every column's type: --data.categorical_columns and "
                             "--data.continuous_columns type the columns of a schema inferred here")
        if source == "csv" and not path:
            raise ValueError("source=csv needs --data.path FILE.csv")
        default_label = TABLES[dataset.lower()][1] if dataset.lower() in TABLES else None
        if source == "gradients" and (schema is not None or schema_from is not None):  # the schema is all
            if schema is not None:
                table_schema = given_schema()
            else:
                table_schema = inferred(Path(schema_from), f"reference table {schema_from}")[0]
            return Table(TabularKind(table_schema), [], [], "gradients")
        if source == "csv":
            where = Path(path)
        elif dataset.lower() in TABLES and source in ("bundled", "gradients"):
            where = Path(str(resources.files("leakage") / "assets" / "tabular" / TABLES[dataset.lower()][0]))
        else:
            if dataset.lower() in TABLES:
                raise ValueError(f"{dataset} is a table: use --data.source bundled (or csv with --data.path)")
            if standardize_onehot:
                raise ValueError("standardize_onehot applies to tables (one-hot columns), not to image data")
            if schema is not None or schema_from is not None:
                raise ValueError("--data.schema and --data.schema_from describe a table; this source reads images")
            return None
        if schema is not None or schema_from is not None:
            table_schema = given_schema() if schema is not None else inferred(
                Path(schema_from), f"reference table {schema_from}")[0]
            header, rows, dropped = read_csv(where)
            continuous = [f.name for f in table_schema.features if f.type == "continuous"]
            rows, note = drop_nonfinite(header, rows, [c for c in continuous if c in header], source=where.name)
            if note:
                rank_zero_warn(note)
            table_schema.encode(header, rows[:0], source=where.name)  # the schema's columns are there
        else:
            table_schema, header, rows, dropped = inferred(
                where, f"inferred from {where.name}, the attacked table itself (victims included)")
            rank_zero_warn(f"the table's schema (categories, means, standard deviations, bounds) is inferred from "
                           f"{where.name} itself, victims included: name a public reference table with "
                           "--data.schema_from FILE.csv, or an earlier schema with --data.schema FILE.json")
        #: records left out for a missing value, said in the run's output
        self.dropped_records = dropped
        if dropped:
            rank_zero_info(f"{where.name}: {dropped} of {dropped + len(rows)} records have a missing value ('?' or "
                           f"empty) and are left out; indices count the {len(rows)} complete records")
        return Table(TabularKind(table_schema), header, rows, where.name)

    def _client(self, protocol, local_steps, local_epochs, local_lr, local_batch_size, shuffle, shuffle_seed,
                share) -> Optional[FedAvgClient]:
        """The FedAvg client's public settings (None for FedSGD), checked against the batch."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        if share not in SHARES:
            raise ValueError(f"unknown share {share!r}; choose one of {', '.join(SHARES)}")
        if protocol == "fedsgd":
            changed = [f"--data.{k}" for k, v, default in (
                ("local_steps", local_steps, 1), ("local_epochs", local_epochs, None), ("local_lr", local_lr, 0.1),
                ("local_batch_size", local_batch_size, None), ("shuffle", shuffle, True),
                ("shuffle_seed", shuffle_seed, 0), ("share", share, "delta")) if v != default]
            if changed:
                raise ValueError(f"FedAvg client settings ({', '.join(changed)}) need --data.protocol fedavg")
            return None
        if local_epochs is not None:
            if local_steps != 1:
                raise ValueError("set --data.local_steps or --data.local_epochs, not both")
            local_steps = epochs_to_steps(local_epochs, self.batch_size, local_batch_size)
        client = FedAvgClient(local_steps=local_steps, local_lr=local_lr, local_batch_size=local_batch_size,
                              shuffle=shuffle, shuffle_seed=shuffle_seed, share=share)
        client.mini_batch(self.batch_size)  # a mini-batch that does not fit the batch is refused now
        return client

    # ------------------------------------------------------------------ victims
    def _selected(self, available: int) -> list[int]:
        wanted = self.indices if self.indices is not None else list(range(self.num_victims * self.batch_size))
        bad = [i for i in wanted if i >= available]
        if bad and self.table is not None:
            raise ValueError(f"record {bad[0]} is out of range: the table has {available} complete records (0-{available - 1})")
        if bad and self.source == "bundled":
            raise ValueError(
                f"the bundled {self.dataset} images are test-split indices 0-{available - 1}; index {bad[0]} is "
                f"not shipped. For the full test split use --data.source torchvision --data.root PATH "
                "(and --data.download true if it is not there yet)"
            )
        if bad:
            raise ValueError(f"index {bad[0]} is out of range: the {self.source} data has {available} images")
        return wanted

    def load_victims(self) -> Secret:
        """Read the selected images and labels, or table records (the secret)."""
        size = self.input_shape[1:]
        if self.table is not None:
            chosen = self._selected(len(self.table))
            x, y = self.table.encode(chosen)
        elif self.source in ("bundled", "folder"):
            if self.source == "bundled" and self.dataset in BUNDLED_ARRAYS:
                images, labels = bundled_array(self.dataset)
            else:
                folder = Path(self.folder) if self.source == "folder" else Path(  # type: ignore[arg-type]
                    str(resources.files("leakage") / "assets" / self.dataset))
                images, labels = read_labelled_folder(folder, self.input_shape[0], size)
            chosen = self._selected(len(images))
            x = torch.stack([images[i] for i in chosen])
            y = torch.tensor([int(labels[i]) for i in chosen])
        elif self.source == "torchvision":
            cls = getattr(datasets, DATASETS[self.dataset][2])
            try:
                ds = cls(self.root, train=False, download=self.download)
            except (RuntimeError, OSError, HTTPException) as err:  # URLError and socket errors are OSErrors
                lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()] or [type(err).__name__]
                reason = lines[0] if not lines[0].endswith(":") else f"{lines[0]} {lines[-1]}"  # MNIST: one per mirror
                reason = reason[:200]
                if self.download:
                    raise ValueError(
                        f"downloading {self.dataset} into {self.root!r} failed ({reason}); check the internet "
                        "connection, or fetch the dataset elsewhere and pass --data.root to where it is "
                        "(without --data.download)"
                    ) from None
                if isinstance(err, RuntimeError):  # torchvision: "Dataset not found or corrupted"
                    raise ValueError(
                        f"{self.dataset} not found under {self.root!r} ({reason}); "
                        "pass --data.download true to fetch it, or --data.root to where it is"
                    ) from None
                raise ValueError(f"cannot read {self.dataset} under {self.root!r}: {reason}") from None
            chosen = self._selected(len(ds))
            mode = "L" if self.input_shape[0] == 1 else "RGB"
            tf = transforms.Compose([transforms.Lambda(lambda im: im.convert(mode)), transforms.Resize(size), transforms.ToTensor()])
            pairs = [ds[i] for i in chosen]
            x = torch.stack([tf(img) for img, _ in pairs])
            y = torch.tensor([int(label) for _, label in pairs])
        else:
            raise ValueError("source=gradients has no victim images")
        if int(y.max()) >= self.num_classes:
            raise ValueError(f"label {int(y.max())} does not fit num_classes={self.num_classes}")
        B = self.batch_size
        return Secret(
            images=x.view(-1, B, *x.shape[1:]),
            labels=y.view(-1, B),
            indices=[chosen[i : i + B] for i in range(0, len(chosen), B)],
        )

    # -------------------------------------------------------------------- setup
    def prepare(self, model: nn.Module) -> Observation:
        """Build the observation (and, for image sources, the secret) for a target model."""
        kind = self.table.kind if self.table is not None else None
        if self.source == "gradients" and is_capture(self.gradient_file):  # type: ignore[arg-type]
            grads, keys = self._read_capture(model)
            self.secret = None
        elif self.source == "gradients":
            grads = load_gradients(self.gradient_file, model)  # type: ignore[arg-type]
            self.secret = None
            keys = None  # by position in the file
        else:
            self.secret = self.load_victims()
            keys = tuple(update_key(ix) for ix in self.secret.indices)
            model = self.server.send(model, self.input_shape)  # the model the clients receive and train
            if self.client is None:
                grads = client_gradients(model, self.secret.images, self.secret.labels, self.client_mode)
            else:
                grads = client_updates(model, self.secret.images, self.secret.labels, self.client, keys,
                                       self.client_mode)
        labels = None
        if self.public_labels:
            if self.secret is None:
                raise ValueError("public_labels needs the victims' data; captured gradients carry no labels")
            labels = self.secret.labels
        try:
            self.observation = Observation(grads, self.batch_size, self.input_shape, self.num_classes,
                                           update_keys=keys, client_mode=self.client_mode, client=self.client,
                                           kind=kind, labels=labels, server=self.server)
        except ValueError as err:
            if self.source != "gradients":
                raise
            raise ValueError(f"gradient file {self.gradient_file}: {err}") from None
        return self.observation

    def _read_capture(self, model: nn.Module) -> tuple[dict[str, Tensor], Optional[tuple[int, ...]]]:
        """A capture file's update; its global weights are loaded into ``model`` (both checked)."""
        source = f"capture file {self.gradient_file}"
        update, weights, meta = read_capture(self.gradient_file)  # type: ignore[arg-type]
        if meta["num_examples"] != self.batch_size:
            raise ValueError(f"{source} holds the update of a client that trained on {meta['num_examples']} "
                             f"examples: set --data.batch_size {meta['num_examples']}")
        recorded_fedavg = meta["share"] != "pseudo_gradient" or meta.get("local_steps", 1) != 1
        if self.client is None and recorded_fedavg:
            raise ValueError(f"{source} holds a FedAvg update ({meta['share']}): add --data.protocol fedavg "
                             "and the client's settings (--data.local_steps, --data.local_lr, --data.local_batch_size)")
        if self.client is not None:
            c = self.client
            check_settings(meta, {"share": c.share, "local_steps": c.local_steps, "local_lr": c.local_lr,
                                  "local_batch_size": c.mini_batch(self.batch_size), "shuffle": c.shuffle,
                                  "shuffle_seed": c.shuffle_seed}, source)
        if weights:
            load_global_weights(model, weights, source)
        grads = validate_gradients(update, model, source=source)
        if next(iter(grads.values())).shape[0] != 1:
            raise ValueError(f"{source} must hold one client's update")
        return grads, ((meta["update_key"],) if "update_key" in meta else None)

    def setup(self, stage: str) -> None:
        if self.observation is not None:
            return
        module = self.trainer.lightning_module if self.trainer is not None else None
        model = getattr(module, "target", None)
        if model is None:
            raise RuntimeError("VictimDataModule needs a LightningModule with a `target` model")
        self.prepare(model)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Steps(), batch_size=None)
