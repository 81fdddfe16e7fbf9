"""Hugging Face ``tokenizer.json`` tokenizers, run by pymodelmgr's C tokenizer.

The C library (``csrc/tok``) encodes and decodes exactly as the Hugging Face
``tokenizers`` package does (WordPiece, byte-level BPE, Unigram, WordLevel and
their normalizers, pre-tokenizers, post-processors and decoders), without the
GIL.  This module is the Python face of it, for users and tests; the model
workers call the C API directly.

Unlike ``tokenizers.Tokenizer.from_file``, the ``truncation`` and ``padding``
blocks stored in a tokenizer.json are *not* applied: truncation and padding
happen only when a call asks for them (all-MiniLM-L6-v2's file pins 128, which
is wrong for embedding).

Example::

    tok = Tokenizer.from_file("tokenizer.json")
    enc = tok.encode("Hello world")
    enc.ids, enc.attention_mask, enc.offsets
    tok.decode(enc.ids)
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Tuple, Union

from . import _core

__all__ = ["Tokenizer", "Encoding"]

Text = Union[str, bytes]


class Encoding:
    """The result of encoding one text (or one pair of texts).

    Attributes mirror ``tokenizers.Encoding``:

    * ``ids``: token ids.
    * ``tokens``: token strings (as the model's vocabulary spells them).
    * ``attention_mask``: 1 for real tokens, 0 for padding.
    * ``type_ids``: segment ids (0 for the first text, usually 1 for the pair).
    * ``special_tokens_mask``: 1 for tokens added by the post-processor and padding.
    * ``offsets``: ``(start, end)`` character offsets into the text each token
      came from; ``(0, 0)`` for special tokens and padding.
    """

    __slots__ = ("ids", "type_ids", "attention_mask", "special_tokens_mask", "offsets", "tokens")

    def __init__(self, ids, type_ids, attention_mask, special_tokens_mask, offsets, tokens):
        self.ids: List[int] = ids
        self.type_ids: List[int] = type_ids
        self.attention_mask: List[int] = attention_mask
        self.special_tokens_mask: List[int] = special_tokens_mask
        self.offsets: Optional[List[Tuple[int, int]]] = offsets
        self.tokens: Optional[List[str]] = tokens

    def __len__(self) -> int:
        """Number of tokens, padding included."""
        return len(self.ids)

    def __repr__(self) -> str:
        return f"Encoding(num_tokens={len(self.ids)}, ids={self.ids!r})"


class Tokenizer:
    """A tokenizer.json loaded into the C tokenizer.

    Immutable after loading and safe to share between threads; every method
    releases the GIL while it works.  Build one with :meth:`from_file` or
    :meth:`from_str`.
    """

    __slots__ = ("_t",)

    def __init__(self, core_tokenizer):
        """Wraps a ``pymodelmgr._core.Tokenizer``; use :meth:`from_file` instead."""
        self._t = core_tokenizer

    @classmethod
    def from_file(cls, path) -> "Tokenizer":
        """Loads ``tokenizer.json`` from ``path``.

        Raises ``OSError`` when the file cannot be read and ``ValueError``
        when it is malformed or uses a component this library does not
        implement (the message names it).
        """
        return cls(_core.Tokenizer.from_file(path))

    @classmethod
    def from_str(cls, json: Union[str, bytes]) -> "Tokenizer":
        """Loads a tokenizer from the text of a tokenizer.json."""
        return cls(_core.Tokenizer.from_str(json))

    @property
    def vocab_size(self) -> int:
        """Vocabulary size including added tokens."""
        return self._t.vocab_size

    def get_vocab_size(self, with_added_tokens: bool = True) -> int:
        """Vocabulary size (added tokens included), named as in ``tokenizers``."""
        return self._t.vocab_size

    def encode(
        self,
        text: Text,
        pair: Optional[Text] = None,
        add_special_tokens: bool = True,
        *,
        max_length: Optional[int] = None,
        truncation: str = "longest_first",
        truncation_side: str = "right",
        padding: Optional[str] = None,
        pad_length: int = 0,
        pad_to_multiple_of: int = 0,
        padding_side: str = "right",
        pad_id: Optional[int] = None,
        pad_type_id: int = 0,
    ) -> Encoding:
        """Encodes one text, or a pair, into an :class:`Encoding`.

        ``max_length`` (total length, special tokens included) turns on
        truncation with ``truncation`` = ``"longest_first"``,
        ``"only_first"`` or ``"only_second"``, cutting at ``truncation_side``.
        ``padding`` = ``"max_length"`` pads to ``pad_length`` (rounded up to
        ``pad_to_multiple_of``); ``"longest"`` does nothing for one text.
        Text must be ``str`` or UTF-8 ``bytes``; anything not valid UTF-8
        raises ``ValueError``.
        """
        return self.encode_batch(
            [text], None if pair is None else [pair], add_special_tokens,
            max_length=max_length, truncation=truncation, truncation_side=truncation_side,
            padding=padding, pad_length=pad_length, pad_to_multiple_of=pad_to_multiple_of,
            padding_side=padding_side, pad_id=pad_id, pad_type_id=pad_type_id, num_threads=1,
        )[0]

    def encode_batch(
        self,
        texts: Iterable[Text],
        pairs: Optional[Iterable[Text]] = None,
        add_special_tokens: bool = True,
        *,
        max_length: Optional[int] = None,
        truncation: str = "longest_first",
        truncation_side: str = "right",
        padding: Optional[str] = None,
        pad_length: int = 0,
        pad_to_multiple_of: int = 0,
        padding_side: str = "right",
        pad_id: Optional[int] = None,
        pad_type_id: int = 0,
        num_threads: int = 0,
    ) -> List[Encoding]:
        """Encodes many texts (and, optionally, as many pair texts).

        ``texts`` may also be a list of ``(text, pair)`` tuples, as
        ``tokenizers`` accepts.  Options are those of :meth:`encode`; ``padding="longest"`` pads every
        encoding to the longest of the batch.  ``num_threads`` splits the
        batch over that many C threads (0: all cores; small batches stay on
        one thread).  Returns one :class:`Encoding` per text, in order.
        """
        texts = list(texts)
        if pairs is None and texts and all(isinstance(t, (tuple, list)) and len(t) == 2 for t in texts):
            # the reference's form: [(text, pair), ...]
            texts, pairs = [t[0] for t in texts], [t[1] for t in texts]
        elif pairs is not None:
            pairs = list(pairs)
        raw = self._t.encode_batch(
            texts, pairs, add_special_tokens, max_length or 0, truncation, truncation_side,
            padding, pad_length, pad_to_multiple_of, padding_side, pad_id, pad_type_id,
            True, True, num_threads=num_threads,
        )
        return [Encoding(*r) for r in raw]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Turns ids back into text; special added tokens are dropped when
        ``skip_special_tokens``.  Unknown ids are skipped, as in ``tokenizers``."""
        return self._t.decode(ids, skip_special_tokens)

    def decode_batch(self, sequences: Iterable[Sequence[int]], skip_special_tokens: bool = True) -> List[str]:
        """:meth:`decode` for each id sequence."""
        return [self._t.decode(ids, skip_special_tokens) for ids in sequences]

    def id_to_token(self, id: int) -> Optional[str]:
        """The token string of ``id`` (added tokens included), or None."""
        return self._t.id_to_token(id)

    def token_to_id(self, token: str) -> Optional[int]:
        """The id of ``token`` (added tokens first), or None."""
        return self._t.token_to_id(token)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size})"
