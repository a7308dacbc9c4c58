"""Tokenizers: the shared DeBERTa-v3 SentencePiece model through transformers, and the synthetic one."""
import functools

import pytest

from sener_jax.data import SyntheticTokenizer, Tokenizer, generate_documents, load_tokenizer


@functools.lru_cache(maxsize=1)
def _load_deberta(path: str) -> Tokenizer:
    return Tokenizer.from_pretrained(path)


@pytest.fixture
def deberta(shared_data):
    return _load_deberta(str(shared_data / "deberta-v3-tokenizer"))


def test_deberta_ids_match_sentencepiece(shared_data, deberta):
    sentencepiece = pytest.importorskip("sentencepiece")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(shared_data / "deberta-v3-tokenizer" / "spm.model"))
    assert (deberta.pad_id, deberta.cls_id, deberta.sep_id, deberta.unk_id, deberta.mask_id) == (0, 1, 2, 3, 128000)
    assert deberta.vocab_size == 128001
    words = ["hello", "Ph.D.", "ünïcode", "2019", "x", "(", "NCBS", "endocytosis", "hello"]
    encoded = deberta.encode_words(words)
    assert [list(ids) for ids in encoded] == [sp.encode(w) for w in words]
    assert deberta.encode_word("endocytosis") == sp.encode("endocytosis")


def test_words_that_encode_to_nothing_become_unk(deberta):
    assert deberta.encode_word("") == [deberta.unk_id]
    assert deberta.encode_word(" ") == [deberta.unk_id]
    assert all(len(ids) >= 1 for ids in deberta.encode_words(["", "a", " ", "\u200b"]))


def test_save_and_reload_both_kinds(tmp_path, deberta):
    deberta.save(tmp_path / "hf")
    again = load_tokenizer(tmp_path / "hf")
    assert isinstance(again, Tokenizer) and again.encode_word("Ph.D.") == deberta.encode_word("Ph.D.")
    synthetic = load_tokenizer("synthetic")
    synthetic.save(tmp_path / "syn")
    reloaded = load_tokenizer(tmp_path / "syn")
    assert isinstance(reloaded, SyntheticTokenizer)
    for word in ["Norvale", "Ph", "zz9", "é", ""]:
        assert reloaded.encode_word(word) == synthetic.encode_word(word)


def test_synthetic_tokenizer_is_small_and_covers_the_generator():
    tok = SyntheticTokenizer.default()
    assert (tok.pad_id, tok.cls_id, tok.sep_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.vocab_size <= 2000
    assert tok.vocab_size == SyntheticTokenizer.default().vocab_size  # deterministic
    words = [w for d in generate_documents(6, seed=3, preset="tiny") for w in d.words]
    ids = [t for w in tok.encode_words(words) for t in w]
    assert tok.unk_id not in ids and max(ids) < tok.vocab_size and min(ids) > tok.mask_id
    # Known words are one token; unknown ones fall back to characters; unknown characters to [UNK].
    assert len(tok.encode_word("Norvale")) == 1
    assert len(tok.encode_word("Qzx")) == 3
    assert tok.encode_word("\u4e2d") == [tok.unk_id]
