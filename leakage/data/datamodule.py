"""Victim data and the client's shared gradients, as a LightningDataModule.

The module keeps two things apart (both plain data, :mod:`leakage.records`):

- :class:`~leakage.records.Observation`: what the attacker sees (the shared gradients and public metadata);
- :class:`~leakage.records.Secret`: the victims' images and labels, read only by metrics and galleries.
"""

from __future__ import annotations

from dataclasses import dataclass
from http.client import HTTPException
from importlib import resources
from pathlib import Path
from typing import Iterator, Optional, Sequence

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset
from torchvision import datasets, transforms

from leakage.federated.capture import check_settings, is_capture, load_global_weights, read_capture
from leakage.federated.client import Client, FedSGD, client_gradients, load_gradients, validate_gradients
from leakage.data.csvtable import drop_nonfinite, numeric_columns, read_csv
from leakage.data.kinds import TabularKind
from leakage.data.tables import TableSchema, read_schema
from leakage.federated.fedavg import client_updates
from leakage.data.imagefolder import read_labelled_folder
from leakage.engine.seeding import update_key
from leakage.federated.server import ImprintServer, Server
from leakage.federated.decepticons import DecepticonServer
from leakage.data.sources import DATASETS, TABLES, Bundled, Source
from leakage.records import Observation, Secret

#: servers defined outside federated/server.py, imported so that ``--data.server NAME`` resolves them
EXTRA_SERVERS = (DecepticonServer,)

#: bundled image sets stored as one array file under leakage/assets/<dataset>/ (uint8 ``images``
#: ``[N, H, W]`` or ``[N, H, W, C]`` and ``labels`` ``[N]``, test-split indices 0 to N-1); the others
#: are PNG folders read by :func:`~leakage.data.imagefolder.read_labelled_folder`
BUNDLED_ARRAYS = {"mnist": "mnist_test_0_999.npz"}
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


def _to_shape(images: Tensor, channels: int, size: tuple[int, int]) -> Tensor:
    """Images ``[N, C, H, W]`` with ``channels`` channels (grey: the mean; colour: grey repeated) and
    resized to ``size`` (bilinear, antialiased, as torchvision's ``Resize``)."""
    if images.shape[1] != channels:
        images = images.mean(dim=1, keepdim=True) if channels == 1 else images.expand(-1, channels, -1, -1)
    if tuple(images.shape[2:]) != tuple(size):
        images = torch.nn.functional.interpolate(images, size=size, mode="bilinear", antialias=True,
                                                 align_corners=False).clamp(0, 1)
    return images


#: where each setting the data module no longer takes lives now (refused in one line naming it)
_SOURCE_KEYS = {
    "dataset": "--data.source Bundled --data.source.dataset NAME (or the dataset of Torchvision, ImageFolder, "
               "BundledTable, CapturedGradients)",
    "root": "--data.source Torchvision --data.source.root PATH",
    "download": "--data.source Torchvision --data.source.download true",
    "folder": "--data.source ImageFolder --data.source.folder PATH",
    "path": "--data.source CSVTable --data.source.path FILE.csv",
    "label_column": "--data.source CSVTable --data.source.label_column NAME",
    "gradient_file": "--data.source CapturedGradients --data.source.gradient_file FILE",
    "image_size": "--data.source.image_size N (a setting of the image sources: Bundled, Torchvision, ImageFolder, "
                  "CapturedGradients)",
    "channels": "--data.source.channels N (a setting of the image sources: Bundled, Torchvision, ImageFolder, "
                "CapturedGradients)",
    "num_classes": "--data.source.num_classes N (a setting of ImageFolder and CapturedGradients)",
    **{key: f"--data.source.{key} (a setting of the table sources: BundledTable, CSVTable; CapturedGradients)"
       for key in ("categorical_columns", "continuous_columns", "schema", "schema_from", "standardize_onehot")},
}
_CLIENT_KEYS = {
    "protocol": "--data.client FedAvg (or FedSGD, the default)",
    "client_mode": "--data.client.client_mode MODE",
    **{key: f"--data.client FedAvg --data.client.{key} VALUE"
       for key in ("local_steps", "local_epochs", "local_lr", "local_batch_size", "shuffle", "shuffle_seed", "share")},
}
_SERVER_KEYS = {
    "num_bins": "--data.server ImprintServer --data.server.num_bins N",
    "feature_mean": "--data.server ImprintServer --data.server.feature_mean X",
    "feature_std": "--data.server ImprintServer --data.server.feature_std X",
    "trap_scale": "--data.server TrapWeightServer --data.server.trap_scale X",
}


def _moved(flag: str) -> str:
    """``--data.a.b X`` with its config form: ``(in a config: data.a.init_args.b)``."""
    first = flag.split(" (")[0].split()
    keys = [w[len("--data."):] for w in first if w.startswith("--data.")]
    last = keys[-1].split(".") if keys else []
    where = f"data.{last[0]}.init_args.{last[1]}" if len(last) == 2 else f"data.{last[0]}: {{class_path: ...}}"
    return f"{flag} (in a config: {where})"


class VictimDataModule(pl.LightningDataModule):
    """Victims and the update their client shares: where the data comes from, how the client
    computes its update, and what the server sends it, each an object with its own settings.

    Args:
        source: where the victims come from (:mod:`leakage.data.sources`): ``Bundled`` (images shipped
            in the package, the default: CIFAR-10), ``BundledTable`` (the Adult records shipped),
            ``Torchvision``, ``ImageFolder``, ``CSVTable`` or ``CapturedGradients`` (no victim data).
            None: ``Bundled()``, the bundled CIFAR-10 images.
        client: the client protocol: ``FedSGD`` (one gradient of the batch's mean loss, the default)
            or ``FedAvg`` (local SGD steps; :mod:`leakage.federated.fedavg`), public to the attacker.
            None: ``FedSGD()``, in train mode.
        server: the threat model (:mod:`leakage.federated.server`): ``Server`` (honest-but-curious:
            the model is sent as it is; the default), or a malicious server that changes the model
            before the clients compute their updates: ``ImprintServer`` (Robbing the Fed's imprint
            module at the input) or ``TrapWeightServer`` (trap weights in a fully connected first layer).
            None: ``Server()``, the honest server.
        num_victims: how many victims (client updates) when ``indices`` is unset.
        indices: the victims' images (test-split indices) or records, grouped into batches of
            ``batch_size``; when unset, the first ``num_victims * batch_size``.
        batch_size: images or records in one client update.
        public_labels: the victims' labels are public (the attack's ``labels: known``; TabLeak's setting).

    With captured gradients every update in the file is a victim: ``indices`` and ``num_victims``
    are refused there, not ignored.
    """

    #: what ``leakage fit`` starts from (its parser's defaults, so that ``--data.source.dataset mnist``
    #: needs no ``--data.source Bundled`` and ``--help`` and a run's config.yaml name the classes)
    CLI_DEFAULTS = {"source": {"class_path": "leakage.data.sources.Bundled"},
                    "client": {"class_path": "leakage.federated.client.FedSGD"},
                    "server": {"class_path": "leakage.federated.server.Server"}}
    #: every flat setting that moved into the source, the client or the server, and where it is now
    MOVED = {key: _moved(flag) for key, flag in {**_SOURCE_KEYS, **_CLIENT_KEYS, **_SERVER_KEYS}.items()}

    def __init__(
        self,
        source: Optional[Source] = None,
        client: Optional[Client] = None,
        server: Optional[Server] = None,
        num_victims: int = 1,
        indices: Optional[list[int]] = None,
        batch_size: int = 1,
        public_labels: bool = False,
    ) -> None:
        super().__init__()
        source = Bundled() if source is None else source
        client = FedSGD() if client is None else client
        server = Server() if server is None else server
        for name, value, base in (("source", source, Source), ("client", client, Client), ("server", server, Server)):
            if not isinstance(value, base) or type(value) in (Source, Client):  # a kind of it, not the bare base
                raise ValueError(f"{name} must be a {base.__name__} object of one kind (see --data.{name}.help), "
                                 f"got {value!r}")
        s = source
        #: the source and the client protocol as given; ``source`` is the source's name, as reports print it
        self.source_object, self.client_protocol = source, client
        self.source = s.name
        self.client_mode = client.client_mode
        self.public_labels = public_labels
        #: a text source's sequences (:class:`leakage.data.textcorpus.TextCorpus`), else None
        self.corpus = s.open()
        self.table = None if self.corpus is not None else self._table(s.name, s.dataset, s.path, s.label_column, s.categorical_columns, s.schema,
                                 s.standardize_onehot, s.schema_from, s.continuous_columns)
        self.dataset = s.dataset
        #: the data's name in reports, HPARAMS and metrics: the CSV file's name for a CSV table, the
        #: captured update's file for a captured table's update, else the dataset
        self.data_name = (Path(s.path).name if s.name == "csv" else
                          Path(s.gradient_file).name if s.name == "gradients" and self.table is not None
                          else self.dataset)
        for name, value in (("batch_size", batch_size), ("num_victims", num_victims)):
            if not _is_int(value):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if batch_size < 1 or num_victims < 1:
            raise ValueError(f"batch_size and num_victims must be >= 1, got {batch_size} and {num_victims}")
        if indices is not None:
            if not all(_is_int(i) for i in indices):
                raise ValueError(f"indices must be integers, got {indices}")
            if len(indices) == 0 or len(indices) % batch_size:
                raise ValueError(
                    f"{len(indices)} indices do not split into victims of batch_size {batch_size}"
                )
            if any(i < 0 for i in indices):
                raise ValueError(f"indices must be >= 0, got {indices}")
        if not s.has_victims and (indices is not None or num_victims != 1):
            name = "indices" if indices is not None else "num_victims"
            raise ValueError(f"{type(s).__name__} does not use --data.{name}: every update in the gradient file is "
                             "a victim; there are no images to pick or count")
        self.root, self.download, self.folder = s.root, s.download, s.folder
        self.indices = list(indices) if indices is not None else None
        self.num_victims = num_victims
        self.batch_size = batch_size
        self.gradient_file = s.gradient_file
        self.observation: Optional[Observation] = None
        self.secret: Optional[Secret] = None
        #: the FedAvg client's settings for this batch size (None: FedSGD)
        self.client = client.for_batch(batch_size)
        if server.malicious and not s.has_victims:
            raise ValueError(f"--data.server {type(server).__name__} changes the model before the clients compute "
                             "their updates: it needs the victims' data, not captured gradients")
        self.server = server.for_dataset(self.dataset) if isinstance(server, ImprintServer) else server
        if self.table is not None:
            kind = self.table.kind
            self.input_shape = kind.sample_shape
            self.num_classes = len(kind.schema.classes)
            return
        if self.corpus is not None:
            self.input_shape = self.corpus.kind.sample_shape
            self.num_classes = self.corpus.num_classes
            return
        shape, classes, _ = DATASETS[self.dataset]
        c = s.channels or shape[0]
        hw = (s.image_size, s.image_size) if s.image_size is not None else shape[1:]
        if s.has_victims and min(hw) < MIN_SCORED_SIZE:
            raise ValueError(
                f"image_size {s.image_size} is too small to score the reconstructions: SSIM needs images of at least "
                f"{MIN_SCORED_SIZE}x{MIN_SCORED_SIZE} pixels"
            )
        self.input_shape: tuple[int, int, int] = (c, *hw)
        self.num_classes: int = classes if s.num_classes is None else s.num_classes

    def _table(self, source, dataset, path, label_column, categorical_columns, schema, standardize_onehot=None,
               schema_from=None, continuous_columns=None) -> Optional[Table]:
        """A table source's kind (its schema, and where it came from) and its complete records, or None
        for images."""

        def given_schema() -> TableSchema:
            table_schema = read_schema(schema)
            if standardize_onehot is not None and standardize_onehot != table_schema.standardized_onehot:
                raise ValueError(f"standardize_onehot is {str(standardize_onehot).lower()} but the schema {schema} "
                                 f"encodes {'standardised' if table_schema.standardized_onehot else 'plain'} one-hot "
                                 "columns (--data.source.standardize_onehot null uses the schema's encoding)")
            if label_column is not None and label_column != table_schema.label:
                raise ValueError(f"--data.source.label_column {label_column} differs from the schema's label column "
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
                raise ValueError(f"{dataset} is a table: use --data.source BundledTable (or CSVTable)")
            if standardize_onehot:
                raise ValueError("standardize_onehot applies to tables (one-hot columns), not to image data")
            if schema is not None or schema_from is not None:
                raise ValueError("schema and schema_from describe a table; this source reads images")
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
                           "--data.source.schema_from FILE.csv, or an earlier schema with --data.source.schema FILE.json")
        #: records left out for a missing value, said in the run's output
        self.dropped_records = dropped
        if dropped:
            rank_zero_info(f"{where.name}: {dropped} of {dropped + len(rows)} records have a missing value ('?' or "
                           f"empty) and are left out; indices count the {len(rows)} complete records")
        return Table(TabularKind(table_schema), header, rows, where.name)

    @classmethod
    def from_config(cls, section: dict) -> "VictimDataModule":
        """The data module a config's ``data:`` section describes, built as ``leakage fit`` builds it
        (``source``/``client``/``server`` as ``class_path`` and ``init_args``, or a class name)."""
        from jsonargparse import ArgumentParser

        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, "data")
        return parser.instantiate_classes(parser.parse_object({"data": section})).data

    # ------------------------------------------------------------------ victims
    def _selected(self, available: int) -> list[int]:
        wanted = self.indices if self.indices is not None else list(range(self.num_victims * self.batch_size))
        bad = [i for i in wanted if i >= available]
        if bad and self.corpus is not None:
            raise ValueError(f"sequence {bad[0]} is out of range: {self.corpus.name} has {available} sequences (0-{available - 1})")
        if bad and self.table is not None:
            raise ValueError(f"record {bad[0]} is out of range: the table has {available} complete records (0-{available - 1})")
        if bad and self.source == "bundled":
            raise ValueError(
                f"the bundled {self.dataset} images are test-split indices 0-{available - 1}; index {bad[0]} is "
                f"not shipped. For the full test split use --data.source Torchvision --data.source.root PATH "
                "(and --data.source.download true if it is not there yet)"
            )
        if bad:
            raise ValueError(f"index {bad[0]} is out of range: the {self.source} data has {available} images")
        return wanted

    def load_victims(self) -> Secret:
        """Read the selected images and labels, or table records (the secret)."""
        size = self.input_shape[1:]
        if self.corpus is not None:
            chosen = self._selected(len(self.corpus))
            x, y = self.corpus.encode(chosen)
        elif self.table is not None:
            chosen = self._selected(len(self.table))
            x, y = self.table.encode(chosen)
        elif self.source in ("bundled", "folder"):
            if self.source == "bundled" and self.dataset in BUNDLED_ARRAYS:
                images, labels = bundled_array(self.dataset)
                images = _to_shape(images, self.input_shape[0], size)
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
                        "connection, or fetch the dataset elsewhere and pass --data.source.root to where it is "
                        "(without --data.source.download)"
                    ) from None
                if isinstance(err, RuntimeError):  # torchvision: "Dataset not found or corrupted"
                    raise ValueError(
                        f"{self.dataset} not found under {self.root!r} ({reason}); "
                        "pass --data.source.download true to fetch it, or --data.source.root to where it is"
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
        if self.corpus is not None:  # decoding a dummy needs the model's token embedding
            kind = self.corpus.kind.bind(model)
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
            grads = self.client_protocol.shared_update(grads, model)  # only what the client trains (its trainable/freeze)
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
            raise ValueError(f"{source} holds a FedAvg update ({meta['share']}): add --data.client FedAvg "
                             "and the client's settings (--data.client.local_steps, --data.client.local_lr, "
                             "--data.client.local_batch_size)")
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
