"""A synthetic long-document NER dataset: researcher homepages (deterministic by seed).

Each document is raw text with character-offset entities, turned into words by the same path as
user text (`document_from_text`), so the raw-text route is exercised end to end. Entities follow
consistent cues so that a tiny model can learn them:

- long blocks: `education` (a paragraph starting with a degree, e.g. "Ph.D. in Physics, University
  of Norvale, 2004. ...") and `work_experience` (a paragraph starting with a date range, e.g.
  "2005 - 2009: Lecturer at Kestrin College. ..."), each 20..60 words (preset "small") or 20..200
  ("large"), each a paragraph of its own under its heading;
- nested inside them (and elsewhere): `organization`, `date`, `degree`;
- short: `name` (after "Dr."/"Prof." and in the header), `email`, `phone`, `award`,
  `research_interest`.
Everything else is filler from a fixed word list that never occurs inside an entity.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import random

from sener_jax.data import lexicon as lx
from sener_jax.data.documents import Document, split_words
from sener_jax.data.readers import document_from_text, document_to_chars_record, write_jsonl

SYNTHETIC_LABELS = (
    "name", "email", "phone", "research_interest", "award", "education", "work_experience",
    "organization", "date", "degree",
)


@dataclasses.dataclass(frozen=True)
class SyntheticPreset:
    """Sizes of one synthetic dataset."""

    n_train: int
    n_dev: int
    n_test: int
    min_words: int
    max_words: int
    min_block_words: int
    max_block_words: int


PRESETS = {
    # The demo: small enough to train a tiny model on 2 CPU cores in minutes.
    "small": SyntheticPreset(200, 40, 40, 200, 1500, 20, 60),
    "large": SyntheticPreset(1000, 100, 100, 500, 5000, 20, 200),
    # For unit tests: a handful of short documents.
    "tiny": SyntheticPreset(8, 4, 4, 120, 400, 20, 40),
}
SPLIT_OFFSETS = {"train": 0, "dev": 1, "test": 2}


class _TextBuilder:
    """Appends text and records character-offset entities (nesting allowed)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.n_words = 0
        self.entities: list[tuple[int, int, str]] = []

    def write(self, text: str) -> None:
        self.parts.append(text)
        self.length += len(text)
        self.n_words += len(split_words(text)[0])

    @contextlib.contextmanager
    def entity(self, label: str):
        start = self.length
        yield
        end = self.length
        # Entities never end in whitespace: step back over what was written after the last word.
        for part in reversed(self.parts):
            stripped = len(part) - len(part.rstrip())
            end -= stripped
            if stripped < len(part):
                break
        self.entities.append((start, end, label))

    def labelled(self, label: str, text: str) -> None:
        with self.entity(label):
            self.write(text)

    @property
    def text(self) -> str:
        return "".join(self.parts)


class _Homepage:
    def __init__(self, rng: random.Random, preset: SyntheticPreset):
        self.rng = rng
        self.preset = preset
        self.b = _TextBuilder()
        self.first = rng.choice(lx.FIRST_NAMES)
        self.last = rng.choice(lx.LAST_NAMES)
        self.pronoun = rng.choice(("He", "She"))

    # -- pieces -----------------------------------------------------------------------------------
    def org(self) -> str:
        return self.rng.choice(lx.ORG_TEMPLATES).format(p=self.rng.choice(lx.PLACES))

    def date(self) -> str:
        year = self.rng.choice(lx.YEARS)
        return f"{self.rng.choice(lx.MONTHS)} {year}" if self.rng.random() < 0.4 else year

    def filler_sentence(self, words=lx.FILLER_WORDS, low: int = 5, high: int = 14) -> str:
        body = " ".join(self.rng.choice(words) for _ in range(self.rng.randint(low, high)))
        return f"{self.rng.choice(lx.SENTENCE_STARTERS)} {body}."

    def fill_block(self, words, target: int, start_count: int) -> None:
        """Filler sentences until the block has `target` to `target + 2` words (ending with '.')."""
        while self.b.n_words - start_count < target:
            remaining = target - (self.b.n_words - start_count) - 2  # a sentence adds starter and '.'
            self.b.write(" " + self.filler_sentence(words, low=1, high=max(1, min(14, remaining))))

    def person(self) -> None:
        self.b.labelled("name", f"{self.rng.choice(lx.FIRST_NAMES)} {self.rng.choice(lx.LAST_NAMES)}")

    # -- sections ---------------------------------------------------------------------------------
    def header(self) -> None:
        b, rng = self.b, self.rng
        b.labelled("name", f"{self.first} {self.last}")
        b.write(f"\n{rng.choice(lx.POSITIONS)}, ")
        b.labelled("organization", self.org())
        domain = rng.choice(lx.PLACES).lower()
        b.write("\nEmail: ")
        b.labelled("email", f"{self.first.lower()}.{self.last.lower()}@{domain}.{rng.choice(('edu', 'org', 'com'))}")
        b.write("\nPhone: ")
        # No year-like number (1980..2024) inside a phone number: those are always dates.
        area, prefix, line = rng.randint(100, 999), rng.randint(100, 999), rng.randint(3000, 9999)
        b.labelled("phone", f"+{rng.randint(1, 49)} ({area}) {prefix}-{line}")
        b.write("\n\n")

    def biography(self) -> None:
        b, rng = self.b, self.rng
        b.write(f"{lx.HEADINGS['biography']}\n")
        b.write("Dr. ")
        b.labelled("name", f"{self.first} {self.last}")
        b.write(f" is a {rng.choice(lx.POSITIONS)} at ")
        b.labelled("organization", self.org())
        b.write(f". {self.pronoun} joined in ")
        b.labelled("date", self.date())
        b.write(".")
        for _ in range(rng.randint(1, 4)):
            b.write(" " + self.filler_sentence())
        if rng.random() < 0.5:
            b.write(" The group works with Prof. ")
            self.person()
            b.write(".")
        b.write("\n\n")

    def research(self) -> None:
        b, rng = self.b, self.rng
        b.write(f"{lx.HEADINGS['research']}\nMy research interests include ")
        topics = rng.sample(lx.TOPICS, rng.randint(2, 4))
        for i, topic in enumerate(topics):
            if i:
                b.write(" and " if i == len(topics) - 1 else ", ")
            b.labelled("research_interest", topic)
        b.write(".")
        for _ in range(rng.randint(0, 3)):
            b.write(" " + self.filler_sentence())
        b.write("\n\n")

    def block_length(self) -> int:
        # fill_block may overshoot its target by 2 words.
        return self.rng.randint(self.preset.min_block_words, self.preset.max_block_words - 2)

    def education(self) -> None:
        b, rng = self.b, self.rng
        b.write(f"{lx.HEADINGS['education']}\n")
        for _ in range(rng.randint(1, 3)):
            target, count = self.block_length(), b.n_words
            with b.entity("education"):
                b.labelled("degree", rng.choice(lx.DEGREES))
                b.write(f" in {rng.choice(lx.FIELDS)}, ")
                b.labelled("organization", self.org())
                b.write(", ")
                b.labelled("date", self.date())
                b.write(".")
                self.fill_block(lx.THESIS_FILLER, target, count)
            b.write("\n")
        b.write("\n")

    def experience(self) -> None:
        b, rng = self.b, self.rng
        b.write(f"{lx.HEADINGS['experience']}\n")
        for _ in range(rng.randint(1, 3)):
            target, count = self.block_length(), b.n_words
            with b.entity("work_experience"):
                b.labelled("date", self.date())
                b.write(" - ")
                b.labelled("date", self.date())
                b.write(f": {rng.choice(lx.POSITIONS)} at ")
                b.labelled("organization", self.org())
                b.write(".")
                self.fill_block(lx.WORK_FILLER, target, count)
            b.write("\n")
        b.write("\n")

    def awards(self) -> None:
        b, rng = self.b, self.rng
        b.write(f"{lx.HEADINGS['awards']}\n")
        for _ in range(rng.randint(1, 3)):
            name = f"{rng.choice(lx.AWARD_ADJECTIVES)} {rng.choice(lx.AWARD_NOUNS)}"
            if rng.random() < 0.3:
                name = f"{rng.choice(lx.PLACES)} {name}"
            b.labelled("award", name)
            b.write(", ")
            b.labelled("date", self.date())
            b.write(".\n")
        b.write("\n")

    def filler_section(self, max_words: int) -> None:
        b, rng = self.b, self.rng
        b.write(f"{rng.choice(lx.FILLER_HEADINGS)}\n")
        start = b.n_words
        while b.n_words - start < max_words:
            b.write(self.filler_sentence() + " ")
            if rng.random() < 0.2:
                b.write("\n")
        b.write("\n\n")

    def build(self) -> tuple[str, list[tuple[int, int, str]]]:
        rng = self.rng
        target = rng.randint(self.preset.min_words, self.preset.max_words)
        sections = [self.biography, self.research, self.education, self.experience, self.awards]
        rng.shuffle(sections)
        # Filler sections go between the labelled ones so that entities occur all along long documents.
        self.header()
        expected = 60 + 25 * len(sections) + 2 * self.preset.max_block_words
        filler_budget = max(0, target - expected)
        n_fillers = rng.randint(1, 4)
        slots = sorted(rng.randint(0, len(sections)) for _ in range(n_fillers))
        for i, section in enumerate(sections + [None]):
            for _ in range(slots.count(i)):
                self.filler_section(max(5, filler_budget // n_fillers))
            if section is not None:
                section()
        return self.b.text, self.b.entities


def generate_documents(n: int, seed: int = 0, preset: str | SyntheticPreset = "small", split: str = "train"
                       ) -> list[Document]:
    """`n` synthetic homepages; the same (n, seed, preset, split) always gives the same documents."""
    return [document_from_text(doc_id, text, ents) for doc_id, text, ents in _generate_raw(n, seed, preset, split)]


def _generate_raw(n: int, seed: int, preset: str | SyntheticPreset, split: str):
    sizes = PRESETS[preset] if isinstance(preset, str) else preset
    for i in range(n):
        rng = random.Random(f"sener-synthetic/{seed}/{split}/{i}")
        text, entities = _Homepage(rng, sizes).build()
        yield f"{split}-{i:05d}", text, entities


def write_synthetic_dataset(directory: str | os.PathLike, seed: int = 0, preset: str | SyntheticPreset = "small"
                            ) -> dict[str, str]:
    """Write train/dev/test `.jsonl` files in the character-offset format; returns {split: path}."""
    sizes = PRESETS[preset] if isinstance(preset, str) else preset
    os.makedirs(directory, exist_ok=True)
    paths = {}
    for split, count in (("train", sizes.n_train), ("dev", sizes.n_dev), ("test", sizes.n_test)):
        path = os.path.join(os.fspath(directory), f"{split}.jsonl")
        write_jsonl(path, (document_to_chars_record(d) for d in generate_documents(count, seed, sizes, split)))
        paths[split] = path
    return paths
