"""Tokenizers of the text kind: the bundled GPT-2 BPE (``encoder.json`` and ``vocab.bpe`` shipped in
``leakage/assets/text``, read offline with ``tokenizers``) or your own ``transformers`` tokenizer folder."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

#: the bundled tokenizer's name (what runs record)
BUNDLED_BPE = "gpt2-bpe"


class TextTokenizer:
    """Text to token ids and back: the bundled GPT-2 BPE (``folder`` None) or the ``transformers``
    tokenizer in ``folder`` (``AutoTokenizer.from_pretrained``, local files only).

    Args:
        folder: a tokenizer folder of your own (``tokenizer.json``, or a model folder); None: the bundled
            GPT-2 BPE, whose ``<|endoftext|>`` (50256) pads.
    """

    def __init__(self, folder: Optional[str] = None) -> None:
        self.folder = folder
        if folder is None:
            self._tok = _bundled_bpe()
            self.vocab_size = self._tok.get_vocab_size()
            self.pad_token_id = self._tok.token_to_id("<|endoftext|>")
            self.name = BUNDLED_BPE
            self._hf = False
            return
        from transformers import AutoTokenizer

        if not Path(folder).is_dir():
            raise ValueError(f"tokenizer folder {folder!r} does not exist: give a folder with tokenizer.json "
                             "(or leave tokenizer unset for the bundled GPT-2 BPE)")
        try:
            tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise ValueError(f"cannot read a tokenizer from {folder!r}: {first}") from None
        self._tok = tok
        self.vocab_size = len(tok)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad is None:
            raise ValueError(f"the tokenizer in {folder!r} has neither a pad nor an end-of-text token to pad with")
        self.pad_token_id = int(pad)
        self.name = Path(folder).name
        self._hf = True

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text`` (no special tokens added)."""
        if self._hf:
            return list(self._tok.encode(text, add_special_tokens=False))
        return list(self._tok.encode(text).ids)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of token ids (padding left out)."""
        ids = [int(i) for i in ids if int(i) != self.pad_token_id]
        return self._tok.decode(ids) if ids else ""

    def piece(self, token: int) -> str:
        """One token as text (its leading space kept)."""
        return self._tok.decode([int(token)])

    def __repr__(self) -> str:
        return f"TextTokenizer({self.name})"


@lru_cache(maxsize=1)
def _bundled_bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    folder = resources.files("leakage") / "assets" / "text"
    with resources.as_file(folder / "encoder.json") as vocab, resources.as_file(folder / "vocab.bpe") as merges:
        tok = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok
