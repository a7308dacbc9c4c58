"""The synthetic homepage generator and the coverage report."""
import collections

import pytest

from sener_jax.data import (
    SYNTHETIC_LABELS,
    SYNTHETIC_PRESETS,
    Document,
    Entity,
    generate_documents,
    load_tokenizer,
    read_documents,
    word_span_to_chars,
    write_synthetic_dataset,
)
from sener_jax.data import coverage as cov


@pytest.fixture(scope="module")
def small_docs():
    return generate_documents(30, seed=0, preset="small")


def test_generator_is_deterministic_and_seed_dependent():
    a = generate_documents(3, seed=4, preset="tiny")
    b = generate_documents(3, seed=4, preset="tiny")
    c = generate_documents(3, seed=5, preset="tiny")
    assert [(d.text, d.entities) for d in a] == [(d.text, d.entities) for d in b]
    assert [d.text for d in a] != [d.text for d in c]
    assert generate_documents(2, seed=4, preset="tiny", split="dev")[0].text != a[0].text


def test_small_preset_shape(small_docs):
    preset = SYNTHETIC_PRESETS["small"]
    lengths = [d.n_words for d in small_docs]
    assert min(lengths) >= preset.min_words and max(lengths) <= preset.max_words + 200
    assert max(lengths) > 1000  # long documents occur
    by_type = collections.defaultdict(list)
    for d in small_docs:
        for e in d.entities:
            by_type[e.label].append(e.length)
    assert set(by_type) == set(SYNTHETIC_LABELS)
    for block in ("education", "work_experience"):
        assert preset.min_block_words <= min(by_type[block]) and max(by_type[block]) <= preset.max_block_words
    assert max(by_type["name"]) <= 3 and max(by_type["date"]) <= 2


def test_large_preset_has_long_blocks():
    docs = generate_documents(6, seed=0, preset="large")
    blocks = [e.length for d in docs for e in d.entities if e.label in ("education", "work_experience")]
    assert max(blocks) > 100 and min(blocks) >= 20 and max(blocks) <= 200
    assert max(d.n_words for d in docs) > 1500


def test_entities_are_nested_in_blocks_and_reproduce_their_text(small_docs):
    nested = collections.Counter()
    for d in small_docs:
        blocks = [e for e in d.entities if e.label in ("education", "work_experience")]
        for e in d.entities:
            start, end = word_span_to_chars(d, e.start, e.end)
            assert d.text[start:end].strip() == d.text[start:end]
            assert d.words[e.start:e.end] == [d.text[a:b] for a, b in d.word_offsets[e.start:e.end]]
            if any(b.start <= e.start and e.end <= b.end and b != e for b in blocks):
                nested[e.label] += 1
        # Every block starts with its cue (a degree or a date) and ends a sentence.
        for b in blocks:
            assert d.words[b.end - 1] == "."
    assert {"organization", "date", "degree"} <= set(nested)


def test_written_files_read_back_identically(tmp_path):
    paths = write_synthetic_dataset(tmp_path, seed=2, preset="tiny")
    assert set(paths) == {"train", "dev", "test"}
    for split, path in paths.items():
        read = read_documents(path, format="chars")
        made = generate_documents(getattr(SYNTHETIC_PRESETS["tiny"], f"n_{split}"), 2, "tiny", split)
        assert [(d.doc_id, d.text, d.words, d.entities) for d in read] == [
            (d.doc_id, d.text, d.words, d.entities) for d in made
        ]


# -- coverage ----------------------------------------------------------------------------------------
class _OneTokenPerWord:
    def encode_words(self, words):
        return [(5,)] * len(words)


def test_coverage_counts_by_reason():
    # 10 words, budget 4 tokens per segment.
    doc = Document("d", ["w"] * 10, [Entity(0, 2, "a"), Entity(3, 5, "a"), Entity(2, 9, "b"), Entity(8, 9, "b")])
    tok = _OneTokenPerWord()
    # overlap 0: windows [0,4) [4,8) [8,10): (3,5) crosses a cut; (2,9) has 7 words > window + 1 = 6.
    c = cov.coverage([doc], tok, window=5, max_tokens=6, overlap_words=0)
    assert c["a"] == {"entities": 2, "representable": 1, "longer_than_window": 0, "crosses_cut": 1}
    assert c["b"] == {"entities": 2, "representable": 1, "longer_than_window": 1, "crosses_cut": 0}
    assert c["ALL"]["entities"] == 4 and c["ALL"]["representable"] == 2
    # overlap 2: windows [0,4) [2,6) [4,8) [6,10): (3,5) now inside [2,6).
    c = cov.coverage([doc], tok, window=5, max_tokens=6, overlap_words=2)
    assert c["a"]["representable"] == 2
    # The original: subword pieces of 4 tokens, [0,4) [4,8) [8,10): same cuts as overlap 0 here.
    assert cov.coverage([doc], tok, 5, 6, 0, cut="subwords")["a"]["crosses_cut"] == 1
    with pytest.raises(ValueError, match="cut must be"):
        cov.coverage([doc], tok, 5, 6, 0, cut="chars")


def test_coverage_cli_on_synthetic_files(tmp_path, capsys):
    paths = write_synthetic_dataset(tmp_path, seed=0, preset="tiny")
    cov.main([paths["train"], "--tokenizer", "synthetic", "--window", "16", "--max-tokens", "64",
              "--overlap", "20", "--original"])
    out = capsys.readouterr().out
    assert "### Table-1 statistics" in out and "| ALL |" in out and "representable (original" in out
    docs = read_documents(paths["train"])
    stats = cov.corpus_statistics(docs)
    assert f"| {stats['entities']} |" in out
    c = cov.coverage(docs, load_tokenizer("synthetic"), 16, 64, 20)
    assert c["ALL"]["longer_than_window"] == sum(e.length > 17 for d in docs for e in d.entities) > 0
    assert c["ALL"]["crosses_cut"] == 0  # every entity <= 17 words < overlap 20


def test_write_synthetic_command_line(tmp_path, capsys):
    from sener_jax.data import write_synthetic

    write_synthetic.main([str(tmp_path), "--preset", "tiny", "--seed", "2"])
    assert "train" in capsys.readouterr().out
    docs = read_documents(tmp_path / "dev.jsonl")
    assert [d.text for d in docs] == [d.text for d in generate_documents(4, 2, "tiny", "dev")]
