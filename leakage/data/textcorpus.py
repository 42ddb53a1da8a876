"""Text victims read from a file: one sequence per line (``.txt``) or one JSON object per line
(``.jsonl``, a text field and an optional label field), tokenized and cut or padded to ``seq_len``.

Sequences without a label of their own (the bundled sentences, a ``.txt`` file, a ``.jsonl`` file
without the label field) take a public rule's label: 1 when the sequence has more than
:data:`LONG_TOKENS` tokens before cutting (the bundled sentences' median is 12), else 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

from leakage.data.kinds.text import TextKind
from leakage.data.tokenizer import TextTokenizer

#: the public label rule of unlabelled text: label 1 when a sequence has more tokens than this
LONG_TOKENS = 12


@dataclass
class TextCorpus:
    """A text source's sequences: its kind (``seq_len`` and the tokenizer), the sequences' text and
    labels, and its name in reports; encoded only when picked (:meth:`encode`)."""

    kind: TextKind
    texts: list[str]
    labels: list[int]
    num_classes: int
    name: str
    #: what the labels mean, in one line (reports and docs)
    label_rule: str = ""

    def __len__(self) -> int:
        return len(self.texts)

    def encode(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Sequences ``indices`` as token ids ``[N, seq_len]`` (floats holding integers: the model
        input a client feeds) and their labels ``[N]``."""
        n, pad = self.kind.seq_len, self.kind.pad_token_id
        rows = []
        for i in indices:
            ids = self.kind.tokenizer.encode(self.texts[i])[:n]
            if not ids:
                raise ValueError(f"{self.name}: sequence {i} has no tokens (an empty line): leave it out")
            rows.append(ids + [pad] * (n - len(ids)))
        x = torch.tensor(rows, dtype=torch.float32).view(len(rows), n)
        y = torch.tensor([self.labels[i] for i in indices], dtype=torch.long)
        return x, y


def length_labels(tokenizer: TextTokenizer, texts: list[str]) -> list[int]:
    """The public rule's labels: 1 when a text has more than :data:`LONG_TOKENS` tokens, else 0."""
    return [int(len(tokenizer.encode(t)) > LONG_TOKENS) for t in texts]


def _check_text(text: str, where: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: the text is empty or not a string: leave it out")
    return text


def read_text(path: Path, text_field: str, label_field: Optional[str]) -> tuple[list[str], Optional[list]]:
    """The texts of a ``.txt`` (a line each, empty lines left out) or ``.jsonl`` file, and its labels
    (``.jsonl`` with ``label_field``), else None."""
    if not path.is_file():
        raise ValueError(f"text file {str(path)!r} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"text file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    if path.suffix.lower() != ".jsonl":
        if path.suffix.lower() not in (".txt", ".text", ""):
            raise ValueError(f"text file {path}: give a .txt file (one sequence per line) or a .jsonl file "
                             "(one JSON object per line)")
        return [ln for ln in lines if ln.strip()], None
    texts, labels = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number} is not JSON ({err.msg})") from None
        if not isinstance(record, dict) or text_field not in record:
            raise ValueError(f"{path}:{number} has no {text_field!r} field (set --data.source.text_field)")
        texts.append(_check_text(record[text_field], f"{path}:{number}"))
        if label_field is not None:
            if label_field not in record:
                raise ValueError(f"{path}:{number} has no {label_field!r} field (set --data.source.label_field, "
                                 "or null for the length rule)")
            labels.append(record[label_field])
    return texts, (labels if label_field is not None else None)


def class_indices(labels: list, where: str) -> tuple[list[int], int]:
    """Labels as class indices: integers ``0..K-1`` as they are, other values (strings) in sorted order."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
        if min(labels) < 0:
            raise ValueError(f"{where}: integer labels must be class indices >= 0, got {min(labels)}")
        return list(labels), max(2, max(labels) + 1)
    if not all(isinstance(v, str) for v in labels):
        raise ValueError(f"{where}: labels must be all integers (class indices) or all strings (class names)")
    classes = sorted(set(labels))
    return [classes.index(v) for v in labels], max(2, len(classes))
