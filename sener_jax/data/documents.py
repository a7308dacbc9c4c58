"""Documents, entities and the word splitter for raw text.

Everything downstream works on word indices. When a document comes from raw text, the text and
each word's character offsets are kept so that a predicted word span maps back to exact
characters (`word_span_to_chars`).
"""
from __future__ import annotations

import bisect
import dataclasses
import re
import sys
from typing import NamedTuple, Sequence

import regex


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


def _class_of(pattern: str) -> str:
    """A character class holding exactly the code points that Python's `re` matches with `pattern`.

    The `regex` module's own \\w and \\s differ from `re`'s (it counts combining marks, superscript
    digits, ... as word characters); building the classes from `re` keeps the word/space decision of
    every base character what it always was, so only grapheme clustering changes.
    """
    every = "".join(map(chr, range(sys.maxunicode + 1)))
    ranges = (m.span() for m in re.finditer(pattern + "+", every))
    return "".join(f"\\U{a:08x}-\\U{b - 1:08x}" for a, b in ranges)


# A word is a run of grapheme clusters that start with a word character (`re`'s \w: letters,
# digits, underscore), or one single cluster that starts with any other non-space character, so
# that "Ph.D.," becomes Ph . D . , and an entity that ends at punctuation ends on a word boundary.
# Splitting by grapheme clusters (`\X`, Unicode extended grapheme clusters) keeps combining accents
# (NFD "José"), Indic vowel signs and viramas, emoji ZWJ sequences, skin tones, flags and variation
# selectors with their base: a plain `\w+|[^\w\s]` over code points cut all of them off. On text
# where every cluster is one code point (or whitespace) the two rules give the same words
# (tests/test_text_graphemes.py checks this on every shared document).
_WORD_CLASS = _class_of(r"\w")
_SPACE_CLASS = _class_of(r"\s")
_WORD_PATTERN = regex.compile(rf"(?:(?=[{_WORD_CLASS}])\X)+|(?=[^{_SPACE_CLASS}])\X")
_CLUSTER = regex.compile(r"\X")
# Fast path: the rule above, per code point, is exact wherever every grapheme cluster is a single
# code point, which holds in whitespace-separated chunks of ASCII (the one multi-code-point ASCII
# cluster, CR LF, is whitespace). Only the chunks holding a non-ASCII character go through `\X`,
# which is about 8 times slower; `_reference_spans` applies `_WORD_PATTERN` to the whole text.
_ASCII_WORD_PATTERN = re.compile(r"\w+|[^\w\s]")
_NON_ASCII_CHUNK = re.compile(r"\S*[^\x00-\x7f]\S*")


def _word_spans(text: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    position = 0
    for chunk in _NON_ASCII_CHUNK.finditer(text):
        spans += [m.span() for m in _ASCII_WORD_PATTERN.finditer(text, position, chunk.start())]
        spans += [m.span() for m in _WORD_PATTERN.finditer(text, chunk.start(), chunk.end())]
        position = chunk.end()
    spans += [m.span() for m in _ASCII_WORD_PATTERN.finditer(text, position)]
    return spans


def _reference_spans(text: str) -> list[tuple[int, int]]:
    """`_word_spans` without the fast path (tests compare the two)."""
    return [m.span() for m in _WORD_PATTERN.finditer(text)]


def split_words(text: str, cuts: Sequence[int] = ()) -> tuple[list[str], list[tuple[int, int]]]:
    """Split raw text into words with their (start, end) character offsets.

    Rule: whitespace separates words and is never part of one; a run of grapheme clusters starting
    with word characters (`\\w`: letters, digits, underscore) is one word; every other cluster is a
    word by itself; a word never splits a grapheme cluster (an accent, vowel sign or emoji modifier
    stays with its base).
    `cuts` are extra character positions at which a word is split further (the reader passes the
    gold entities' boundaries, so an entity that starts or ends inside a run such as "ACME2020"
    still covers whole words and `text[start:end]` is reproduced exactly). Text to predict on has
    no gold, hence no cuts: an entity boundary inside such a run can be learnt from gold but not
    predicted exactly; with the rule above this is rare (boundaries at spaces and punctuation).
    A cut inside a grapheme cluster is a ValueError (see `cut_inside_cluster`).
    """
    cut_set = sorted(set(int(c) for c in cuts))
    words: list[str] = []
    offsets: list[tuple[int, int]] = []
    for start, end in _word_spans(text):
        inside = _cuts_inside(cut_set, start, end)
        if inside:
            for cut in inside:
                cluster = _cluster_around(text, start, end, cut)
                if cluster is not None:
                    raise ValueError(f"cut at character {cut} splits the grapheme cluster {cluster!r}")
        pieces = [start, *inside, end]
        for a, b in zip(pieces[:-1], pieces[1:]):
            words.append(text[a:b])
            offsets.append((a, b))
    return words, offsets


def _cuts_inside(sorted_cuts: list[int], start: int, end: int) -> list[int]:
    lo = bisect.bisect_right(sorted_cuts, start)
    hi = bisect.bisect_left(sorted_cuts, end)
    return sorted_cuts[lo:hi]


def _cluster_around(text: str, start: int, end: int, position: int) -> str | None:
    """The grapheme cluster of the word `text[start:end]` that `position` falls strictly inside, or None."""
    for match in _CLUSTER.finditer(text, start, end):
        if match.start() < position < match.end():
            return match.group()
        if match.start() >= position:
            return None
    return None


def cut_inside_cluster(text: str, offsets: Sequence[tuple[int, int]], position: int) -> str | None:
    """The grapheme cluster that a cut at `position` would split, or None.

    `offsets` are the word offsets of `split_words(text)` (no cuts): words start and end on cluster
    boundaries, so only a position strictly inside a word can split a cluster.
    """
    index = bisect.bisect_right(offsets, (position, sys.maxunicode + 1)) - 1
    if index < 0:
        return None
    start, end = offsets[index]
    if not start < position < end:
        return None
    return _cluster_around(text, start, end, position)


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
