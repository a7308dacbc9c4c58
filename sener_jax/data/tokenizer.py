"""Word-by-word subword tokenizers.

Every word is encoded on its own, without special tokens (SPEC §2), and the result is cached per
word: documents repeat words a lot, so a whole corpus costs one call per distinct word. A word
that encodes to nothing becomes `[UNK]` so that every word owns at least one token.

Two kinds, same interface (`cls_id`, `sep_id`, `pad_id`, `unk_id`, `mask_id`, `vocab_size`,
`encode_word`, `encode_words`, `save`):
- `Tokenizer`: a Hugging Face tokenizer (DeBERTa-v3 SentencePiece) loaded with
  `AutoTokenizer.from_pretrained` (never the `DebertaV2Tokenizer(vocab_file=...)` constructor,
  which in transformers 5 silently builds a 7-token vocabulary).
- `SyntheticTokenizer`: file-free and deterministic, for the synthetic demo data: a fixed
  vocabulary (the generator's words) with a character fallback, a few hundred ids.
`load_tokenizer(spec)` gives either: "synthetic", a directory written by `save`, or a HF name/dir.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

from sener_jax.data.lexicon import lexicon_words

SYNTHETIC_FILE = "synthetic_tokenizer.json"
SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")


class _CachedWordEncoder:
    """Shared caching logic: subclasses implement `_encode_uncached(words) -> list[list[int]]`."""

    pad_id: int
    cls_id: int
    sep_id: int
    unk_id: int
    mask_id: int
    vocab_size: int

    def __init__(self) -> None:
        self._cache: dict[str, tuple[int, ...]] = {}

    def _encode_uncached(self, words: Sequence[str]) -> list[list[int]]:
        raise NotImplementedError

    def encode_words(self, words: Sequence[str]) -> list[tuple[int, ...]]:
        """Token ids of each word (at least one per word), encoding every distinct new word once."""
        cache = self._cache
        missing = [w for w in dict.fromkeys(words) if w not in cache]
        if missing:
            for word, ids in zip(missing, self._encode_uncached(missing)):
                cache[word] = tuple(ids) if ids else (self.unk_id,)
        return [cache[w] for w in words]

    def encode_word(self, word: str) -> list[int]:
        return list(self.encode_words([word])[0])

    @property
    def special_ids(self) -> tuple[int, ...]:
        return tuple(sorted({self.pad_id, self.cls_id, self.sep_id, self.unk_id, self.mask_id}))


class Tokenizer(_CachedWordEncoder):
    """A Hugging Face subword tokenizer used word by word."""

    def __init__(self, hf_tokenizer) -> None:
        super().__init__()
        self.hf = hf_tokenizer
        ids = {}
        for name in ("pad", "cls", "sep", "unk", "mask"):
            value = getattr(hf_tokenizer, f"{name}_token_id", None)
            if value is None:
                raise ValueError(f"tokenizer has no {name} token ({name}_token_id is None)")
            ids[name] = int(value)
        self.pad_id, self.cls_id, self.sep_id = ids["pad"], ids["cls"], ids["sep"]
        self.unk_id, self.mask_id = ids["unk"], ids["mask"]
        self.vocab_size = max(len(hf_tokenizer), self.mask_id + 1)

    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike) -> "Tokenizer":
        from transformers import AutoTokenizer  # deferred: heavy, and the synthetic tokenizer needs none of it

        return cls(AutoTokenizer.from_pretrained(os.fspath(name_or_dir)))

    def _encode_uncached(self, words: Sequence[str]) -> list[list[int]]:
        # Batched call: one Rust/SentencePiece call for all new words instead of one per word.
        return self.hf(list(words), add_special_tokens=False)["input_ids"]

    def save(self, directory: str | os.PathLike) -> None:
        self.hf.save_pretrained(os.fspath(directory))


class SyntheticTokenizer(_CachedWordEncoder):
    """Whole-word vocabulary plus one id per known character; unknown characters map to [UNK].

    Ids: [PAD]=0, [CLS]=1, [SEP]=2, [UNK]=3, [MASK]=4, then `words`, then `chars`.
    """

    def __init__(self, words: Sequence[str], chars: Sequence[str]) -> None:
        super().__init__()
        self.pad_id, self.cls_id, self.sep_id, self.unk_id, self.mask_id = range(len(SPECIAL_TOKENS))
        self.words = list(dict.fromkeys(words))
        self.chars = list(dict.fromkeys(chars))
        self._word_ids = {w: len(SPECIAL_TOKENS) + i for i, w in enumerate(self.words)}
        base = len(SPECIAL_TOKENS) + len(self.words)
        self._char_ids = {c: base + i for i, c in enumerate(self.chars)}
        self.vocab_size = base + len(self.chars)

    @classmethod
    def default(cls) -> "SyntheticTokenizer":
        chars = [chr(c) for c in range(33, 127)]
        return cls(lexicon_words(), chars)

    def _encode_uncached(self, words: Sequence[str]) -> list[list[int]]:
        out = []
        for word in words:
            if word in self._word_ids:
                out.append([self._word_ids[word]])
            else:
                out.append([self._char_ids.get(c, self.unk_id) for c in word])
        return out

    def save(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, SYNTHETIC_FILE), "w", encoding="utf-8") as handle:
            json.dump({"kind": "synthetic", "words": self.words, "chars": self.chars}, handle)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "SyntheticTokenizer":
        path = os.path.join(directory, SYNTHETIC_FILE)
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        if data.get("kind") != "synthetic" or not isinstance(data.get("words"), list):
            raise ValueError(f"{path}: field 'kind'/'words': not a synthetic tokenizer file")
        return cls(data["words"], data.get("chars", []))


AnyTokenizer = Tokenizer | SyntheticTokenizer


def load_tokenizer(spec: str | os.PathLike) -> AnyTokenizer:
    """"synthetic", a directory written by either tokenizer's `save`, or a Hugging Face name/dir."""
    spec = os.fspath(spec)
    if spec == "synthetic":
        return SyntheticTokenizer.default()
    if os.path.isfile(os.path.join(spec, SYNTHETIC_FILE)):
        return SyntheticTokenizer.load(spec)
    return Tokenizer.from_pretrained(spec)
