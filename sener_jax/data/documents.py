"""Documents, entities and the word splitter for raw text.

Everything downstream works on word indices. When a document comes from raw text, the text and
each word's character offsets are kept so that a predicted word span maps back to exact
characters (`word_span_to_chars`).
"""
from __future__ import annotations

import bisect
import dataclasses
import re
from typing import NamedTuple, Sequence


class Entity(NamedTuple):
    """A labelled word span: `start` inclusive, `end` exclusive (word indices)."""

    start: int
    end: int
    label: str

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclasses.dataclass
class Document:
    """One document: its words, its gold entities and (for raw-text input) where each word lies.

    `word_offsets[i] = (char_start, char_end)` of `words[i]` in `text`, so
    `text[char_start:char_end] == words[i]`.
    """

    doc_id: str
    words: list[str]
    entities: list[Entity] = dataclasses.field(default_factory=list)
    text: str | None = None
    word_offsets: list[tuple[int, int]] | None = None

    @property
    def n_words(self) -> int:
        return len(self.words)


# A word is a run of letters/digits/underscore, or one single other non-space character, so that
# "Ph.D.," becomes Ph . D . , and an entity that ends at punctuation ends on a word boundary.
_WORD_PATTERN = re.compile(r"\w+|[^\w\s]")


def split_words(text: str, cuts: Sequence[int] = ()) -> tuple[list[str], list[tuple[int, int]]]:
    """Split raw text into words with their (start, end) character offsets.

    Rule: whitespace separates words and is never part of one; a run of word characters
    (`\\w`: letters, digits, underscore) is one word; every other character is a word by itself.
    `cuts` are extra character positions at which a word is split further (the reader passes the
    gold entities' boundaries, so an entity that starts or ends inside a run such as "ACME2020"
    still covers whole words and `text[start:end]` is reproduced exactly). Text to predict on has
    no gold, hence no cuts: an entity boundary inside such a run can be learnt from gold but not
    predicted exactly; with the rule above this is rare (boundaries at spaces and punctuation).
    """
    cut_set = sorted(set(int(c) for c in cuts))
    words: list[str] = []
    offsets: list[tuple[int, int]] = []
    for match in _WORD_PATTERN.finditer(text):
        start, end = match.span()
        pieces = [start, *_cuts_inside(cut_set, start, end), end]
        for a, b in zip(pieces[:-1], pieces[1:]):
            words.append(text[a:b])
            offsets.append((a, b))
    return words, offsets


def _cuts_inside(sorted_cuts: list[int], start: int, end: int) -> list[int]:
    lo = bisect.bisect_right(sorted_cuts, start)
    hi = bisect.bisect_left(sorted_cuts, end)
    return sorted_cuts[lo:hi]


def word_span_to_chars(doc: Document, start: int, end: int) -> tuple[int, int]:
    """Character span `(char_start, char_end)` of the words `[start, end)` of a raw-text document."""
    if doc.word_offsets is None:
        raise ValueError(f"document {doc.doc_id!r} has no character offsets (it was not read from raw text)")
    if not 0 <= start < end <= len(doc.word_offsets):
        raise ValueError(
            f"document {doc.doc_id!r}: word span [{start}, {end}) is not inside its {len(doc.word_offsets)} words"
        )
    return doc.word_offsets[start][0], doc.word_offsets[end - 1][1]


def label_set(documents: Sequence[Document]) -> list[str]:
    """Sorted entity labels occurring in `documents`."""
    return sorted({e.label for d in documents for e in d.entities})
