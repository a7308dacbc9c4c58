"""Unlabelled text for pretraining: any number of files or glob patterns, labels ignored.

Formats: the three JSON-lines formats `read_documents` knows (paper, SciREX, chars; `.gz` too) and
plain text, `.txt` / `.txt.gz`, one document per file (any length: segmentation cuts it later).
Plain text is split into words with `split_words`, exactly as raw-text input to fine-tuning, so
pretraining and fine-tuning see the same word boundaries and subwords.

An entry may end in `@N` (N a positive integer): every document of the files it matches then counts N
times per pass: upsampling, e.g. of the target task's own text beside a large out-of-domain corpus
("task-adaptive pretraining"). `corpus.txt@4` reads corpus.txt and repeats its documents four times.
"""
from __future__ import annotations

import glob
import gzip
import logging
import os
import re
from typing import Iterable, Sequence

from sener_jax.data.documents import Document, split_words
from sener_jax.data.readers import read_documents

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".txt.gz")
_REPEAT = re.compile(r"^(?P<pattern>.+)@(?P<times>\d+)$")


def split_entries(patterns: str | Sequence[str]) -> list[str]:
    """A comma-separated `pretrain.files` string (or a list) as its non-empty entries."""
    if isinstance(patterns, str):
        patterns = patterns.split(",")
    return [p for p in patterns if p.strip()]


def split_repeat(entry: str) -> tuple[str, int]:
    """`PATTERN@N` -> (PATTERN, N); an entry without a numeric `@N` suffix -> (entry, 1)."""
    match = _REPEAT.match(entry.strip())
    if match is None:
        return entry.strip(), 1
    times = int(match["times"])
    if times < 1:
        raise ValueError(f"pretrain.files: {entry!r}: the repeat count after '@' must be >= 1")
    return match["pattern"], times


def expand_paths(patterns: str | Sequence[str]) -> list[str]:
    """Every file matched by `patterns` (paths or globs, `**` allowed), each once, in pattern order
    then sorted. A pattern matching no file is an error naming it (a typo must not train on nothing)."""
    out: dict[str, None] = {}
    for pattern in split_entries(patterns):
        pattern = os.path.expanduser(pattern.strip())
        matches = sorted(m for m in glob.glob(pattern, recursive=True) if os.path.isfile(m))
        if not matches:
            raise FileNotFoundError(f"pretrain.files: {pattern!r} matches no file")
        out.update(dict.fromkeys(matches))
    return list(out)


def read_text_file(path: str) -> Document:
    """One plain-text file as one unlabelled document (words as `split_words` cuts them)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    words, offsets = split_words(text)
    return Document(path, words, [], text=text, word_offsets=offsets)


def read_corpus(patterns: str | Sequence[str], format: str = "auto", exclude_ids: Iterable[str] = ()) -> list[Document]:
    """Unlabelled documents of every matched file (entities dropped); empty documents and documents
    whose id is in `exclude_ids` (e.g. an evaluation split) are left out. JSON-lines records that
    cannot be read are skipped with a warning (`strict=False`): their text is all pretraining needs."""
    exclude = set(exclude_ids)
    patterns = split_entries(patterns)
    repeats: dict[str, int] = {}
    for entry in patterns:
        pattern, times = split_repeat(entry)
        for path in expand_paths([pattern]):
            repeats.setdefault(path, times)  # a file matched twice: its first entry decides
    documents: list[Document] = []
    for path, times in repeats.items():
        if path.endswith(TEXT_SUFFIXES):
            found = [read_text_file(path)]
        else:
            found = read_documents(path, format=format, strict=False)
        kept = [Document(d.doc_id, d.words, [], d.text, d.word_offsets) for d in found
                if d.words and d.doc_id not in exclude]
        logger.info("pretraining corpus: %d documents, %d words from %s%s", len(kept), sum(d.n_words for d in kept), path,
                    f" (x{times} per pass)" if times > 1 else "")
        documents += kept * times
    if not documents:
        raise ValueError(f"pretrain.files {list(patterns)!r}: no words")
    return documents
