"""Where the victims' data comes from: one small class per source, each with only its own settings.

The data module (:class:`leakage.data.datamodule.VictimDataModule`) takes one of these as its
``source`` (LightningCLI style: ``--data.source Torchvision --data.source.root PATH`` on the command
line, ``source: {class_path: leakage.data.sources.Torchvision, init_args: {root: PATH}}`` in a config;
``leakage fit --data.source.help Torchvision`` lists one source's settings). Each class checks its own
settings when it is made, in one line; what depends on the rest of the run (the victims' indices,
the client's batch) the data module checks.

- :class:`Bundled`: images shipped in the package (the first 20 CIFAR-10, the first 1,000 MNIST test images);
- :class:`BundledTable`: a table shipped in the package (the first 1,000 Adult test records);
- :class:`Torchvision`: a full torchvision test split under ``root``;
- :class:`ImageFolder`: your own images;
- :class:`CSVTable`: your own table;
- :class:`CapturedGradients`: updates you captured (no victim data);
- :class:`BundledText`: sentences shipped in the package (1,000 fortunes, the GPT-2 BPE);
- :class:`TextFile`: your own text (``.txt`` or ``.jsonl``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Optional

from leakage.data.kinds.text import TextKind
from leakage.data.textcorpus import LONG_TOKENS, TextCorpus, class_indices, length_labels, read_text
from leakage.data.tokenizer import TextTokenizer

#: name -> (input shape, classes, torchvision class)
DATASETS: dict[str, tuple[tuple[int, int, int], int, str]] = {
    "cifar10": ((3, 32, 32), 10, "CIFAR10"),
    "cifar100": ((3, 32, 32), 100, "CIFAR100"),
    "mnist": ((1, 28, 28), 10, "MNIST"),
    "fashion_mnist": ((1, 28, 28), 10, "FashionMNIST"),
}
BUNDLED = ("cifar10", "mnist")
#: bundled tables: name -> (file under leakage/assets/tabular, label column)
TABLES = {"adult": ("adult_test_0_999.csv", "income")}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def dataset_key(name: str, choices=DATASETS) -> str:
    """``name`` as a key of ``choices`` (``Fashion-MNIST`` -> ``fashion_mnist``), or a one-line error."""
    key = str(name).lower().replace("-", "_")
    if key not in choices:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(choices)}")
    return key


def _columns(name: str, value: Optional[list[str]]) -> Optional[list[str]]:
    if value is not None and (isinstance(value, str) or not all(isinstance(c, str) for c in value)):
        raise ValueError(f"{name} must be a list of column names, got {value!r}")
    return list(value) if value is not None else None


class Source:
    """A source of victims: its ``name`` in reports, and the settings the data module reads.

    The attributes set here are what a source that does not read a setting means by it (no folder, no
    file, the dataset's own shape); each subclass takes only the settings it reads as arguments."""

    #: the source's name in reports, run summaries and the sweep's tables
    name = ""
    #: the victims are picked by index (every source but captured gradients)
    has_victims = True
    dataset = "cifar10"
    root = "data"
    download = False
    folder: Optional[str] = None
    path: Optional[str] = None
    gradient_file: Optional[str] = None
    label_column: Optional[str] = None
    categorical_columns: Optional[list[str]] = None
    continuous_columns: Optional[list[str]] = None
    schema: Optional[str] = None
    schema_from: Optional[str] = None
    standardize_onehot: Optional[bool] = None
    image_size: Optional[int] = None
    channels: Optional[int] = None
    num_classes: Optional[int] = None

    def _image_settings(self, image_size: Optional[int], channels: Optional[int],
                        num_classes: Optional[int] = None) -> None:
        for name, value in (("image_size", image_size), ("channels", channels), ("num_classes", num_classes)):
            if value is not None and not _is_int(value):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (a classifier tells two classes or more apart), got {num_classes}")
        self.image_size, self.channels, self.num_classes = image_size, channels, num_classes

    def _table_settings(self, categorical_columns, continuous_columns, schema, schema_from, standardize_onehot) -> None:
        if schema is not None and schema_from is not None:
            raise ValueError("give the table's schema one way: schema (FILE.json) or schema_from (FILE.csv)")
        if schema is not None and (categorical_columns or continuous_columns):
            raise ValueError("a schema fixes every column's type: categorical_columns and continuous_columns "
                             "type the columns of a schema inferred here")
        self.categorical_columns = _columns("categorical_columns", categorical_columns)
        self.continuous_columns = _columns("continuous_columns", continuous_columns)
        self.schema, self.schema_from, self.standardize_onehot = schema, schema_from, standardize_onehot

    def open(self) -> Optional[TextCorpus]:
        """The source's own sequences and their kind (text sources), or None (the data module reads the others)."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class Bundled(Source):
    """Images shipped in the package: the first 20 CIFAR-10 and the first 1,000 MNIST test images.

    Args:
        dataset: ``cifar10`` or ``mnist``.
        image_size: resize the images to this square size (default: the dataset's).
        channels: 1 or 3 channels (default: the dataset's).
    """

    name = "bundled"

    def __init__(self, dataset: str = "cifar10", image_size: Optional[int] = None,
                 channels: Optional[int] = None) -> None:
        key = str(dataset).lower().replace("-", "_")
        if key in TABLES:
            raise ValueError(f"{dataset} is a table: use --data.source BundledTable")
        self.dataset = dataset_key(dataset)
        if self.dataset not in BUNDLED:
            raise ValueError(f"the package bundles {' and '.join(BUNDLED)} images only; for {self.dataset} use "
                             "--data.source Torchvision --data.source.root PATH (add --data.source.download true "
                             "to fetch it)")
        self._image_settings(image_size, channels)


class BundledTable(Source):
    """A table shipped in the package: the first 1,000 Adult test records (label column ``income``).

    Args:
        dataset: ``adult``.
        categorical_columns: columns read as categorical besides those inferred (inferred: a column
            holding a value that is not a number, or whole numbers with at most 10 distinct values
            each seen 5 times on average, such as codes 1-4).
        continuous_columns: columns read as continuous although inferred categorical (numbers only).
        schema: the table's public encoding as JSON (the ``schema.json`` of an earlier run).
        schema_from: a public reference table (CSV, the same columns) the schema is inferred from;
            with neither this nor ``schema`` it is inferred from the attacked table itself, victims
            included (a warning says so).
        standardize_onehot: one-hot columns standardised too, ``(onehot - frequency) / std``
            (TabLeak's encoding). Default (None): plain one-hot for a schema built here; with
            ``schema`` the schema's encoding, which a True or False must match.
    """

    name = "bundled"

    def __init__(self, dataset: str = "adult", categorical_columns: Optional[list[str]] = None,
                 continuous_columns: Optional[list[str]] = None, schema: Optional[str] = None,
                 schema_from: Optional[str] = None, standardize_onehot: Optional[bool] = None) -> None:
        self.dataset = dataset_key(dataset, TABLES)
        self._table_settings(categorical_columns, continuous_columns, schema, schema_from, standardize_onehot)


class Torchvision(Source):
    """A full torchvision dataset's test split, read from ``root``.

    Args:
        dataset: ``cifar10``, ``cifar100``, ``mnist`` or ``fashion_mnist``.
        root: where torchvision datasets live.
        download: let torchvision download the dataset into ``root`` (needs the internet).
        image_size: resize the images to this square size (default: the dataset's).
        channels: 1 or 3 channels (default: the dataset's).
    """

    name = "torchvision"

    def __init__(self, dataset: str = "cifar10", root: str = "data", download: bool = False,
                 image_size: Optional[int] = None, channels: Optional[int] = None) -> None:
        self.dataset = dataset_key(dataset)
        if not isinstance(download, bool):
            raise ValueError(f"download must be true or false, got {download!r}")
        self.root, self.download = str(root), download
        self._image_settings(image_size, channels)


class ImageFolder(Source):
    """A folder of your own images (:mod:`leakage.data.imagefolder`: its layout rule).

    Args:
        folder: the image folder.
        dataset: the dataset whose input shape and class count the images take, unless set below.
        image_size: resize the images to this square size (default: the dataset's).
        channels: 1 or 3 channels (default: the dataset's).
        num_classes: the class count (default: the dataset's).
    """

    name = "folder"

    def __init__(self, folder: str, dataset: str = "cifar10", image_size: Optional[int] = None,
                 channels: Optional[int] = None, num_classes: Optional[int] = None) -> None:
        if not folder:
            raise ValueError("an image folder source needs --data.source.folder PATH")
        self.folder, self.dataset = str(folder), dataset_key(dataset)
        self._image_settings(image_size, channels, num_classes)


class CSVTable(Source):
    """Your own table, a CSV file with a header row (records with a missing value, ``?`` or empty, are
    left out and counted).

    Args:
        path: the CSV file.
        label_column: the label column (default: the last column).
        categorical_columns, continuous_columns, schema, schema_from, standardize_onehot: as for
            :class:`BundledTable`.
    """

    name = "csv"

    def __init__(self, path: str, label_column: Optional[str] = None, categorical_columns: Optional[list[str]] = None,
                 continuous_columns: Optional[list[str]] = None, schema: Optional[str] = None,
                 schema_from: Optional[str] = None, standardize_onehot: Optional[bool] = None) -> None:
        if not path:
            raise ValueError("a CSV table source needs --data.source.path FILE.csv")
        self.path, self.label_column, self.dataset = str(path), label_column, "csv"
        self._table_settings(categorical_columns, continuous_columns, schema, schema_from, standardize_onehot)


class CapturedGradients(Source):
    """Updates you captured: a ``.safetensors`` or ``.pt`` file of gradients, or a capture file of
    :mod:`leakage.federated.capture` (a FedAvg update with the global weights it started from: the
    weights are loaded into the target model). Every update in the file is a victim; there is no
    victim data (no images or records to score).

    Args:
        gradient_file: the file.
        dataset: the data the updates were computed on, which sets the input shape and class count:
            an image dataset, or ``adult`` (the bundled table's schema); with ``schema`` or
            ``schema_from``, the table's name in reports.
        image_size, channels, num_classes: override the dataset's input shape and class count.
        schema, schema_from, standardize_onehot: a captured table update's public encoding, as for
            :class:`BundledTable` (instead of the bundled table's).
    """

    name = "gradients"
    has_victims = False

    def __init__(self, gradient_file: str, dataset: str = "cifar10", image_size: Optional[int] = None,
                 channels: Optional[int] = None, num_classes: Optional[int] = None, schema: Optional[str] = None,
                 schema_from: Optional[str] = None, standardize_onehot: Optional[bool] = None) -> None:
        if not gradient_file:
            raise ValueError("a captured gradients source needs --data.source.gradient_file PATH (.safetensors or .pt)")
        self.gradient_file = str(gradient_file)
        key = str(dataset).lower().replace("-", "_")
        # with a schema the table's name is free (it names the data in reports); else it sets the shape
        self.dataset = key if key in TABLES or schema or schema_from else dataset_key(dataset, {**DATASETS, **TABLES})
        self._image_settings(image_size, channels, num_classes)
        self._table_settings(None, None, schema, schema_from, standardize_onehot)


class TextSource(Source):
    """A source of token sequences (the text kind, :class:`leakage.data.kinds.text.TextKind`)."""

    def _text_settings(self, seq_len: int, tokenizer: Optional[str]) -> None:
        if not _is_int(seq_len) or seq_len < 1:
            raise ValueError(f"seq_len must be an integer >= 1 (tokens per sequence), got {seq_len!r}")
        self.seq_len, self.tokenizer = seq_len, tokenizer

    def _corpus(self, texts: list[str], labels: Optional[list], where: str) -> TextCorpus:
        tok = TextTokenizer(self.tokenizer)
        if not texts:
            raise ValueError(f"{where} holds no text")
        if labels is None:
            rule = f"label 1 when a sequence has more than {LONG_TOKENS} tokens, else 0"
            ys, classes = length_labels(tok, texts), 2
        else:
            rule = "the file's labels"
            ys, classes = class_indices(labels, where)
        return TextCorpus(TextKind(self.seq_len, tok), texts, ys, classes, where, rule)


class BundledText(TextSource):
    """Sentences shipped in the package: the first 1,000 FreeBSD fortunes (``fortunes_0_999.txt``,
    BSD licence), tokenized by the bundled GPT-2 BPE (``encoder.json`` and ``vocab.bpe``, MIT licence).

    The sentences have no class: a public rule labels them, 1 when a sentence has more than 12 GPT-2
    tokens (their median) and 0 otherwise.

    Args:
        seq_len: tokens per sequence: longer sentences are cut, shorter ones padded (``<|endoftext|>``).
    """

    name = "bundled"
    dataset = "fortunes"

    def __init__(self, seq_len: int = 16) -> None:
        self._text_settings(seq_len, None)

    def open(self) -> TextCorpus:
        path = resources.files("leakage") / "assets" / "text" / "fortunes_0_999.txt"
        texts = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        return self._corpus(texts, None, "fortunes")


class TextFile(TextSource):
    """Your own text: a ``.txt`` file (one sequence per line) or a ``.jsonl`` file (one JSON object per
    line, with a text field and, optionally, a label field: integer class indices or class names).
    Unlabelled text is labelled by the bundled text's public rule (more than 12 tokens: 1, else 0).

    Args:
        path: the file.
        seq_len: tokens per sequence (cut or padded).
        tokenizer: a ``transformers`` tokenizer folder of your own (default: the bundled GPT-2 BPE).
        text_field: the ``.jsonl`` field holding the text.
        label_field: the ``.jsonl`` field holding the label (None: the length rule).
    """

    name = "textfile"

    def __init__(self, path: str, seq_len: int = 16, tokenizer: Optional[str] = None, text_field: str = "text",
                 label_field: Optional[str] = "label") -> None:
        if not path:
            raise ValueError("a text file source needs --data.source.path FILE (.txt or .jsonl)")
        self.path, self.dataset = str(path), Path(path).name
        self.text_field, self.label_field = text_field, label_field
        self._text_settings(seq_len, tokenizer)

    def open(self) -> TextCorpus:
        where = Path(self.path)
        texts, labels = read_text(where, self.text_field, self.label_field if where.suffix == ".jsonl" else None)
        return self._corpus(texts, labels, where.name)


#: the sources by class name (what ``--data.source NAME`` takes)
SOURCES = {cls.__name__: cls for cls in (Bundled, BundledTable, Torchvision, ImageFolder, CSVTable, CapturedGradients,
                                          BundledText, TextFile)}
