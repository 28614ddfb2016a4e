"""Tokenizers with one interface: a word-level vocabulary built from captions, raw UTF-8 bytes,
and a byte-level BPE trained with Hugging Face `tokenizers`.

All share the specials <pad> <bos> <eos> <mask> <unk> at ids 0..4 (pad is 0 so zero-filled
buffers are padding), `encode(text, add_special=True)`, `decode(ids, skip_special=True)`,
`vocab_size`, and JSON `save(path)` / `load_tokenizer(path)`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from ..io import write_text

SPECIALS = ("<pad>", "<bos>", "<eos>", "<mask>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, MASK_ID, UNK_ID = range(5)

_WORD = re.compile(r"\w+(?:'\w+)?|[^\w\s]")
_NO_SPACE_BEFORE = set(".,;:!?)]}")
_NO_SPACE_AFTER = set("([{")


class Tokenizer:
    """Shared parts; subclasses implement `_encode`, `_decode`, `vocab_size` and `_state`."""

    kind = "base"
    specials = SPECIALS
    pad_id, bos_id, eos_id, mask_id, unk_id = PAD_ID, BOS_ID, EOS_ID, MASK_ID, UNK_ID

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids of `text`, wrapped in bos ... eos when `add_special`."""
        if not isinstance(text, str):
            raise ValueError(f"text: expected a str, got {type(text).__name__}")
        ids = self._encode(text)
        return [self.bos_id, *ids, self.eos_id] if add_special else ids

    def decode(self, ids, skip_special: bool = True) -> str:
        """Text of `ids` (a list or a 1-D tensor). `skip_special` drops pad/bos/eos/mask; <unk>
        always shows, so a lossy encoding is visible."""
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids: expected values in [0, {self.vocab_size}), got {bad[:5]}")
        if skip_special:
            ids = [i for i in ids if i >= len(SPECIALS) or i == self.unk_id]
        return self._decode(ids)

    def save(self, path) -> None:
        """Write the tokenizer as JSON; `load_tokenizer(path)` reads it back."""
        write_text(path, json.dumps({"type": self.kind, **self._state()}, ensure_ascii=False))

    @classmethod
    def load(cls, path) -> Tokenizer:
        tok = load_tokenizer(path)
        if not isinstance(tok, cls):
            raise ValueError(f"{path}: holds a {tok.kind!r} tokenizer, not {cls.kind!r}")
        return tok

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class WordTokenizer(Tokenizer):
    """Whole words and punctuation from a fixed vocabulary (built from captions).

    Text is lower-cased (by default) and split into words and punctuation marks; decode joins
    them with spaces, without a space before closing punctuation. So decode(encode(t)) equals
    `normalize(t)` for text whose words are all in the vocabulary; others decode as <unk>.
    """

    kind = "word"

    def __init__(self, vocab: Iterable[str], lowercase: bool = True):
        words = [w for w in vocab if w not in SPECIALS]
        if len(set(words)) != len(words):
            raise ValueError("vocab: expected unique words, got duplicates")
        self.lowercase = lowercase
        self.itos = [*SPECIALS, *words]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def from_texts(cls, texts: Iterable[str], min_freq: int = 1, max_size: int | None = None,
                   lowercase: bool = True) -> WordTokenizer:
        """Vocabulary of the words seen at least `min_freq` times (most frequent first)."""
        counts = Counter()
        for t in texts:
            counts.update(_WORD.findall(t.lower() if lowercase else t))
        words = sorted((w for w, c in counts.items() if c >= min_freq),
                       key=lambda w: (-counts[w], w))  # frequency, then alphabetical: stable
        if not words:
            raise ValueError("texts: expected at least one word to build a vocabulary, got none")
        return cls(words[:max_size], lowercase=lowercase)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text.lower() if self.lowercase else text)

    def _encode(self, text: str) -> list[int]:
        return [self.stoi.get(w, self.unk_id) for w in self.tokenize(text)]

    def _decode(self, ids: list[int]) -> str:
        out = ""
        for w in (self.itos[i] for i in ids):
            glue = not out or w in _NO_SPACE_BEFORE or out[-1] in _NO_SPACE_AFTER
            out += w if glue else " " + w
        return out

    def normalize(self, text: str) -> str:
        """What decode(encode(text)) gives for in-vocabulary text."""
        return self._decode([self.stoi.get(w, self.unk_id) for w in self.tokenize(text)])

    def _state(self) -> dict:
        return {"vocab": self.itos[len(SPECIALS):], "lowercase": self.lowercase}


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes shifted past the specials: 261 ids, any text, exact round trip."""

    kind = "byte"

    @property
    def vocab_size(self) -> int:
        return len(SPECIALS) + 256

    def _encode(self, text: str) -> list[int]:
        return [b + len(SPECIALS) for b in text.encode("utf-8")]

    def _decode(self, ids: list[int]) -> str:
        # Specials kept in the stream (skip_special=False) are shown by name.
        out, buf = [], bytearray()
        for i in ids:
            if i < len(SPECIALS):
                out.append(buf.decode("utf-8", errors="replace") + SPECIALS[i])
                buf = bytearray()
            else:
                buf.append(i - len(SPECIALS))
        return "".join(out) + buf.decode("utf-8", errors="replace")

    def _state(self) -> dict:
        return {}


class BPETokenizer(Tokenizer):
    """Byte-level BPE from Hugging Face `tokenizers` (exact round trip for any text)."""

    kind = "bpe"

    def __init__(self, hf_tokenizer):
        self._tok = hf_tokenizer
        for i, s in enumerate(SPECIALS):
            if hf_tokenizer.token_to_id(s) != i:
                raise ValueError(f"hf_tokenizer: expected special {s!r} at id {i}, got "
                                 f"{hf_tokenizer.token_to_id(s)}")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 1000,
              min_frequency: int = 2) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = HFTokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIALS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(list(texts), trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def _encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def _state(self) -> dict:
        return {"hf": json.loads(self._tok.to_str())}


_KINDS = {"word": WordTokenizer, "byte": ByteTokenizer, "bpe": BPETokenizer}


def load_tokenizer(path) -> Tokenizer:
    """Read a tokenizer written by `save`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} does not exist")
    try:
        state = json.loads(path.read_text())
        kind = state.pop("type")
    except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as e:
        raise ValueError(f"{path}: expected a tokenizer JSON with a 'type' key ({e})") from None
    if kind == "word":
        return WordTokenizer(state["vocab"], lowercase=state.get("lowercase", True))
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        return BPETokenizer(HFTokenizer.from_str(json.dumps(state["hf"])))
    raise ValueError(f"{path}: type expected one of {', '.join(_KINDS)}, got {kind!r}")


def build_tokenizer(kind: str = "word", texts: Iterable[str] | None = None, **kwargs) -> Tokenizer:
    """"word" (from texts), "byte", or "bpe" (trained on texts; kwargs vocab_size, ...)."""
    if kind not in _KINDS:
        raise ValueError(f"kind: expected one of {', '.join(_KINDS)}, got {kind!r}")
    if kind == "byte":
        return ByteTokenizer()
    if texts is None:
        raise ValueError(f"texts: the {kind!r} tokenizer is built from texts, got None")
    return WordTokenizer.from_texts(texts, **kwargs) if kind == "word" else (
        BPETokenizer.train(texts, **kwargs))
