"""The authors' pipeline as switches (`:paper`): each switch changes what it should, defaults stay ours."""
import dataclasses
import json

import numpy as np
import pytest

from configs import profiling07, scholarxl, scirex
from sener_jax.data import Document, Entity, Segment, merge_documents, segment_document
from sener_jax.data.batching import BatchIterator, authors_total_steps
from sener_jax.data.masking import select_document_words, select_whole_words
from sener_jax.decode import decode_spans
from sener_jax.export import InferenceSettings, _settings_from
from sener_jax.run_setup import inference_settings, prepare_run
from sener_jax.train import train_and_evaluate


class _Tok:
    """Word w (a string of digits) tokenizes to int(w) subwords; ids are 10 + the word index."""
    cls_id, sep_id, pad_id = 1, 2, 0

    def encode_words(self, words):
        return [[10 + i] * int(w) for i, w in enumerate(words)]


def _doc(counts, entities=()):
    return Document("d", [str(c) for c in counts], tuple(Entity(*e) for e in entities))


def test_subword_cut_every_budget_tokens_inside_words_without_overlap():
    doc = _doc([3, 3, 3, 3], [(0, 2, "A"), (1, 2, "A"), (3, 4, "B")])
    ours = segment_document(doc, _Tok(), max_tokens=7, overlap_words=1)
    assert [(s.word_start, s.word_end) for s in ours] == [(0, 1), (1, 2), (2, 3), (3, 4)]  # whole words only
    assert [(s.word_start, s.word_end) for s in segment_document(_doc([2, 2, 2, 2]), _Tok(), 7, 1)] == [
        (0, 2), (1, 3), (2, 4)]  # ... and one word of overlap
    theirs = segment_document(doc, _Tok(), max_tokens=7, overlap_words=1, cut="subwords")
    # 12 subwords cut every 5: tokens [0, 5) [5, 10) [10, 12); word 1 (tokens 3..5) and word 3 are cut in two
    assert [(s.word_start, s.word_end, s.n_tokens) for s in theirs] == [(0, 2, 7), (1, 4, 7), (3, 4, 4)]
    assert [list(s.input_ids[1:-1]) for s in theirs] == [[10, 10, 10, 11, 11], [11, 12, 12, 12, 13], [13, 13]]
    assert [list(s.token_word[1:-1]) for s in theirs] == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 2], [0, 0]]
    assert theirs[0].entities == (Entity(0, 2, "A"), Entity(1, 2, "A")) and theirs[2].entities == (Entity(0, 1, "B"),)
    with pytest.raises(ValueError, match="cut"):
        segment_document(doc, _Tok(), 7, 1, cut="chars")


def test_union_merge_joins_same_type_overlaps_across_pieces_margin_does_not():
    segs = [Segment("d", 0, 4, np.zeros(6, np.int32), np.zeros(6, np.int32)),
            Segment("d", 3, 4, np.zeros(6, np.int32), np.zeros(6, np.int32))]
    # piece 0 predicts words [2, 4) type 0 (ends in the cut word 3), piece 1 words [3, 6) type 0, and
    # [0, 1) type 1; a nested pair inside piece 0 stays as predicted.
    spans = [[(2, 4, 0, 0.9), (0, 2, 1, 0.8), (0, 1, 1, 0.7)], [(0, 3, 0, 0.6), (0, 1, 1, 0.5)]]
    union = merge_documents(segs, spans, "union")["d"]
    assert union == [(0, 1, 1, 0.7), (0, 2, 1, 0.8), (2, 6, 0, 0.9), (3, 4, 1, 0.5)]
    margin = merge_documents(segs, spans)["d"]
    assert (2, 6, 0, 0.9) not in margin and any(s[:3] == (3, 6, 0) for s in margin)
    with pytest.raises(ValueError, match="merge rule"):
        merge_documents(segs, spans, "vote")


def test_document_masking_draws_over_the_document_and_skips_words_that_do_not_fit():
    counts = np.array([5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], np.int32)  # 16 subwords: budget round(0.15*18) = 3
    seg = Segment("d", 6, 6, np.zeros(8, np.int32), np.r_[-1, np.arange(6), -1].astype(np.int32), (), counts)
    row = seg.token_word[None]
    hits_later = []
    for seed in range(200):
        chosen = select_document_words(row, [seg], np.random.default_rng(seed), 0.15)
        hits_later.append(int(chosen.sum()))
        assert not chosen[0, [0, -1]].any()
    # 3 one-subword words over the document (the 5-subword word never fits: skipped, not a stop), so
    # this second half of the document sees 3 * 6/11 masked words on average; ours masks 15% of the
    # segment's own words every time (round(0.9) = 1 word).
    assert max(hits_later) == 3 and min(hits_later) == 0
    assert abs(np.mean(hits_later) - 3 * 6 / 11) < 0.25
    ours = [int(select_whole_words(row, np.random.default_rng(s), 0.15).sum()) for s in range(50)]
    assert set(ours) == {1}


def test_boundary_word_switch_in_decoding_and_settings():
    w, length = 4, 6
    logits = np.full((1, length, 2 * w + 1, 1), -20.0, np.float32)
    for (s, e), value in (((0, 2), 5.0), ((2, 4), 3.0)):  # [0, 2] and [2, 4] share word 2
        logits[0, s, w + (e - s), 0] = logits[0, e, w - (e - s), 0] = value
    ours = decode_spans(logits, [length], w)[0]
    theirs = decode_spans(logits, [length], w, boundary_word_crosses=False)[0]
    assert [s[:2] for s in ours] == [(0, 3)] and [s[:2] for s in theirs] == [(0, 3), (2, 5)]
    assert scholarxl.get_config().eval.boundary_word_crosses is True
    assert inference_settings(scholarxl.get_config("paper")).boundary_word_crosses is False
    # exports written before the switch existed load with ours
    assert _settings_from("model.json", {"max_tokens": 512}).boundary_word_crosses is True
    with pytest.raises(ValueError, match="inference.merge"):
        _settings_from("model.json", {"merge": "vote"})
    assert json.loads(json.dumps(dataclasses.asdict(InferenceSettings(segmentation="subwords"))))["segmentation"] == "subwords"


def test_random_batching_ignores_length_buckets_and_the_authors_step_count():
    segs = [Segment("d", 0, n, np.zeros(n + 2, np.int32), np.r_[-1, np.arange(n), -1].astype(np.int32))
            for n in [2, 30, 2, 30, 2, 30, 2, 30]]
    kw = dict(batch_size=2, pad_id=0, token_buckets=(8, 64), word_buckets=(8, 64), shuffle=True)
    bucketed = BatchIterator(segs, **kw).epoch_plan(0)
    assert all(len({segs[i].n_words > 8 for i in m}) == 1 for _, m in bucketed)  # never mixes lengths
    mixed = [BatchIterator(segs, **kw, seed=s, bucketing=False).epoch_plan(0) for s in range(5)]
    assert any(len({segs[i].n_words > 8 for i in m}) == 2 for plan in mixed for _, m in plan)
    for plan in mixed:  # each batch padded to its longest member's buckets
        assert all(key == ((64, 64) if any(segs[i].n_words > 8 for i in m) else (8, 8)) for key, m in plan)
    assert authors_total_steps(32, 16, 30) == 90 and authors_total_steps(33, 16, 30) == 90  # ours: 60 and 90


@pytest.mark.parametrize("module", [scirex, scholarxl, profiling07])
def test_paper_variants_load_and_set_every_switch(module):
    ours, paper = module.get_config(), module.get_config("paper")
    assert (ours.data.segmentation, ours.data.merge, ours.data.mask_scope) == ("words", "margin", "segment")
    assert (paper.data.segmentation, paper.data.merge, paper.data.mask_scope) == ("subwords", "union", "document")
    assert paper.model.encoder.logn_length == "padded" and ours.model.encoder.logn_length == "tokens"
    assert (paper.train.batching, paper.train.schedule_steps) == ("random", "authors")
    assert (paper.eval.dev_batch_size, paper.eval.test_batch_size, paper.eval.batching) == (2, 4, "order")
    assert paper.train.lr_lora == ours.train.lr_lora and paper.data.max_tokens == ours.data.max_tokens
    tiny = module.get_config("paper_tiny")
    assert tiny.data.segmentation == "subwords" and tiny.model.encoder.hidden_size < 256


def test_paper_tiny_trains_and_evaluates_through_the_authors_pipeline(shared_data, tmp_path):
    config = scholarxl.get_config("paper_tiny")  # short documents: a few pieces each, a quick evaluation
    config.data.train_path = config.data.dev_path = str(shared_data / "scholar-xl" / "dev.json")
    config.train.max_steps = 1
    config.data.tokenizer = str(shared_data / "deberta-v3-tokenizer")
    config.train.export = False
    run = prepare_run(config, tmp_path)
    segments = run.train_iterator.segments
    assert not run.train_iterator.bucketing and run.settings.segmentation == "subwords"
    # the subword cut: every piece but a document's last holds exactly max_tokens - 2 subwords
    assert sum(s.n_tokens == config.data.max_tokens for s in segments) >= len(segments) - 2
    results = train_and_evaluate(config, tmp_path / "run")
    assert results["dev"]["micro"]["gold"] > 0 and results["dev"]["documents"] == 2
