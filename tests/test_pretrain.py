"""Pretraining: the corpus reader, MLM masking, the tied MLM head, and end to end (tiny pretrain ->
WORKDIR/encoder -> fine-tuning through model.pretrained), plus exact resume."""
import json
import pathlib
import shutil
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import demo
from configs import pretrain as pretrain_configs
from sener_jax import convert, train, train_step
from sener_jax.data import split_words
from sener_jax.data.corpus import expand_paths, read_corpus, split_entries, split_repeat
from sener_jax.data.mlm import MlmSpec, mlm_arrays, select_word_spans
from sener_jax.data.readers import write_jsonl
from sener_jax.data.synthetic import generate_documents
from sener_jax.models.deberta import DebertaEncoder, EncoderConfig, init_encoder_params
from sener_jax.models.mlm_head import init_mlm_head_params, mlm_logits
from sener_jax.pretrain import ENCODER_DIR, LOG_FILE, pretrain
from sener_jax.pretrain_step import corpus_output_ids, encoder_config_of, output_ids_of, output_targets


def write_corpus(directory: pathlib.Path, n_docs: int = 12) -> str:
    """Half the documents as .txt files, half as one chars-format JSON-lines file (with entities)."""
    docs = generate_documents(n_docs, seed=0, preset="tiny")
    directory.mkdir(parents=True, exist_ok=True)
    half = n_docs // 2
    for i, doc in enumerate(docs[:half]):
        (directory / f"doc{i}.txt").write_text(doc.text)
    write_jsonl(directory / "more.jsonl", [{"id": d.doc_id, "text": d.text, "entities": []} for d in docs[half:]])
    return f"{directory}/*.txt,{directory}/*.jsonl"


def test_corpus_reads_txt_and_jsonl_globs_without_labels(tmp_path, shared_data):
    patterns = write_corpus(tmp_path / "c", 4)
    docs = read_corpus(patterns)
    assert len(docs) == 4 and all(not d.entities for d in docs)
    text = (tmp_path / "c" / "doc0.txt").read_text()
    assert docs[0].words == split_words(text)[0]
    labelled = read_corpus(str(shared_data / "scholar-xl" / "dev.json"))
    assert len(labelled) == 349 and all(not d.entities for d in labelled)
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        expand_paths(f"{tmp_path}/nothing_here*.txt")


def test_corpus_entries_can_repeat_their_documents(tmp_path):
    """`PATTERN@N` upsamples: each matched document N times, in place; other entries once."""
    write_corpus(tmp_path / "c", 4)
    once = read_corpus(f"{tmp_path}/c/*.txt,{tmp_path}/c/more.jsonl")
    mixed = read_corpus(f"{tmp_path}/c/*.txt@3,{tmp_path}/c/more.jsonl")
    ids = [d.doc_id for d in once]
    assert [d.doc_id for d in mixed] == [ids[0]] * 3 + [ids[1]] * 3 + ids[2:]  # .txt: one document per file
    assert mixed[2].words == once[0].words and mixed[3].words == once[1].words
    assert split_repeat("a/b@c.txt") == ("a/b@c.txt", 1) and split_repeat(" x.txt@12 ") == ("x.txt", 12)
    with pytest.raises(ValueError, match="x.txt@0.*>= 1"):
        read_corpus(f"{tmp_path}/c/x.txt@0")
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        read_corpus(f"{tmp_path}/c/nothing_here.txt@2")


def _word_index(rows=4, words=30, seed=0, n_tokens=96):
    """(B, N) word_index: [CLS] + 1..3 tokens per word + [SEP] + padding."""
    rng = np.random.default_rng(seed)
    out = np.full((rows, n_tokens), -1, np.int32)
    for b in range(rows):
        tokens = np.repeat(np.arange(words), rng.integers(1, 4, size=words))
        out[b, 1 : 1 + len(tokens)] = tokens
    return out


@pytest.mark.parametrize("span_words", [1, 3])
def test_mlm_arrays_take_whole_words_and_gather_their_targets(span_words):
    word_index = _word_index()
    ids = np.where(word_index >= 0, 10 + word_index, 0).astype(np.int32)
    ids[:, 0] = 1
    spec = MlmSpec(mask_id=4, vocab_size=200, special_ids=(0, 1, 2, 3, 4), fraction=0.15, span_words=span_words,
                   mask_token=1.0, random_token=0.0)
    out = mlm_arrays(ids, word_index, np.random.default_rng(1), spec)
    for b in range(ids.shape[0]):
        picked = out["mlm_positions"][b][out["mlm_weights"][b] > 0]
        assert len(picked) >= 1 and np.all(word_index[b, picked] >= 0)  # never [CLS]/[SEP]/padding
        np.testing.assert_array_equal(out["mlm_targets"][b][: len(picked)], ids[b, picked])
        assert np.all(out["input_ids"][b, picked] == 4)  # mask_token=1: every chosen token is [MASK]
        changed = np.nonzero(out["input_ids"][b] != ids[b])[0]
        np.testing.assert_array_equal(np.sort(changed), np.sort(picked))
        words = np.unique(word_index[b, picked])
        assert np.array_equal(np.sort(picked), np.nonzero(np.isin(word_index[b], words))[0])  # whole words
        assert len(picked) <= round(0.15 * (word_index[b] >= 0).sum()) + 3 * span_words
    keep = mlm_arrays(ids, word_index, np.random.default_rng(1), MlmSpec(4, 200, (0, 1, 2, 3, 4), mask_token=0.0,
                                                                      random_token=0.0))
    np.testing.assert_array_equal(keep["input_ids"], ids)  # 0/0: every chosen token kept


def test_word_spans_are_consecutive_runs():
    word_index = _word_index(rows=1, words=200, n_tokens=700)
    selected = select_word_spans(word_index, np.random.default_rng(0), 0.15, 5)
    words = np.unique(word_index[0, selected[0]])
    runs = np.split(words, np.nonzero(np.diff(words) > 1)[0] + 1)
    assert max(len(r) for r in runs) > 1 and len(runs) < len(words)


def test_mlm_head_is_tied_to_the_word_embeddings():
    config = EncoderConfig.from_dict(dict(pretrain_configs.get_config("tiny").model.encoder.to_dict(), vocab_size=50,
                                          pos_att_type=("p2c", "c2p")))
    params = {"encoder": init_encoder_params(config, jax.random.PRNGKey(0)),
              "head": init_mlm_head_params(config, jax.random.PRNGKey(1))}
    ids = jnp.array([[1, 7, 8, 9, 2, 0]], jnp.int32)
    mask = (ids > 0).astype(jnp.int32)
    positions = jnp.array([[1, 3]], jnp.int32)
    # jitted: op-by-op dispatch on 8 fake devices is far slower than compiling this tiny model
    logits = jax.jit(lambda p: mlm_logits(config, p, ids, mask, positions))(params)
    encode = jax.jit(lambda p: DebertaEncoder(config).apply({"params": p}, ids, mask))
    hidden = np.asarray(encode(params["encoder"]))[0, [1, 3]]
    t = params["head"]["transform"]
    x = hidden @ np.asarray(t["dense"]["kernel"]) + np.asarray(t["dense"]["bias"])
    x = np.asarray(jax.nn.gelu(x, approximate=False))
    x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + config.layer_norm_eps)
    x = x * np.asarray(t["LayerNorm"]["scale"]) + np.asarray(t["LayerNorm"]["bias"])
    embedding = np.asarray(params["encoder"]["embeddings"]["word_embeddings"]["embedding"])
    np.testing.assert_allclose(np.asarray(logits)[0], x @ embedding.T + np.asarray(params["head"]["bias"]),
                               rtol=1e-5, atol=1e-5)
    assert set(params["head"]) == {"transform", "bias"}  # no decoder matrix of its own


def test_corpus_output_vocabulary_is_the_full_softmax_restricted_to_the_corpus_ids():
    config = EncoderConfig.from_dict(dict(pretrain_configs.get_config("tiny").model.encoder.to_dict(), vocab_size=50))
    params = {"encoder": init_encoder_params(config, jax.random.PRNGKey(0)),
              "head": init_mlm_head_params(config, jax.random.PRNGKey(1))}
    params["head"]["bias"] = jax.random.normal(jax.random.PRNGKey(2), (50,))  # a non-zero bias must follow the ids
    ids = np.array([[1, 7, 8, 9, 2, 0], [1, 30, 7, 44, 9, 2]], np.int32)
    mask, positions = (ids > 0).astype(np.int32), np.array([[1, 3], [1, 3]], np.int32)
    segments = [SimpleNamespace(input_ids=row[row > 0]) for row in ids]
    output_ids = corpus_output_ids(segments)
    assert output_ids.tolist() == [1, 2, 7, 8, 9, 30, 44]
    full, restricted = jax.jit(lambda p: (mlm_logits(config, p, ids, mask, positions),
                                          mlm_logits(config, p, ids, mask, positions, output_ids=output_ids)))(params)
    np.testing.assert_allclose(np.asarray(restricted), np.asarray(full)[..., output_ids], rtol=1e-6, atol=1e-6)
    targets, weights = np.array([[7, 9], [30, 0]], np.int32), np.array([[1, 1], [1, 0]], np.float32)
    columns = output_targets(targets, weights, output_ids)
    assert output_ids[columns[weights > 0]].tolist() == [7, 9, 30] and columns[1, 1] == 0
    with pytest.raises(ValueError, match="output vocabulary"):
        output_targets(np.array([[5]], np.int32), np.ones((1, 1), np.float32), output_ids)


def test_output_vocab_choice_is_checked():
    config = pretrain_configs.get_config("tiny")
    config.pretrain.output_vocab = "corpus"
    assert output_ids_of(config, [SimpleNamespace(input_ids=np.array([3, 1]))]).tolist() == [1, 3]
    config.pretrain.output_vocab = "full"
    assert output_ids_of(config, []) is None
    config.pretrain.output_vocab = "some"
    with pytest.raises(ValueError, match="pretrain.output_vocab"):
        output_ids_of(config, [])


def tiny_pretrain_config(patterns: str, steps: int = 30):
    config = pretrain_configs.get_config("tiny")
    config.pretrain.files = patterns
    config.pretrain.max_steps = steps
    config.pretrain.checkpoint_every_steps = 10
    return config


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    config = tiny_pretrain_config(write_corpus(root / "corpus"))
    summary = pretrain(config, root / "run")
    return config, root / "run", summary


def test_pretraining_lowers_the_mlm_loss_and_writes_the_encoder(pretrained):
    _, workdir, summary = pretrained
    assert summary["probe_loss_after"] < summary["probe_loss_before"] - 0.3, summary
    assert summary["curve"][-1][1] < summary["curve"][0][1]
    logged = json.loads((workdir / LOG_FILE).read_text())
    assert logged["probe_loss_after"] == summary["probe_loss_after"] and logged["curve"] == summary["curve"]
    assert any(p.name.startswith("events.out.tfevents") for p in (workdir / "tensorboard").iterdir())
    config, params = convert.load_encoder(workdir / ENCODER_DIR)
    assert config.lora_rank == 0 and "head" not in params and "embeddings" in params


def test_fine_tuning_starts_from_the_pretrained_encoder(pretrained, tmp_path):
    _, workdir, _ = pretrained
    _, saved = convert.load_encoder(workdir / ENCODER_DIR)
    config = demo.get_config("tiny")
    config.model.pretrained = str(workdir / ENCODER_DIR)
    config.train.max_steps = 2
    config.eval.splits = ("dev",)
    run_config = train_step.model_config_from(config, 626, 7)
    start = train_step.initial_params(config, run_config, jax.random.PRNGKey(0))
    flat_saved = traverse_util.flatten_dict(jax.device_get(saved))
    for path, value in traverse_util.flatten_dict(start["encoder"]).items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(flat_saved[path]))
    results = train.train_and_evaluate(config, tmp_path / "ft")
    assert "dev" in results and 0.0 <= results["dev"]["micro"]["f1"] <= 1.0
    assert (tmp_path / "ft" / "export").is_dir()


def test_reinit_top_layers_restarts_only_the_top_layer(pretrained):
    _, workdir, _ = pretrained
    _, saved = convert.load_encoder(workdir / ENCODER_DIR)
    config = demo.get_config("tiny")
    config.model.pretrained = str(workdir / ENCODER_DIR)
    config.model.reinit_top_layers = 1
    run_config = train_step.model_config_from(config, 626, 7)
    rng = jax.random.PRNGKey(0)
    start = traverse_util.flatten_dict(train_step.initial_params(config, run_config, rng)["encoder"])
    random = traverse_util.flatten_dict(train_step.init_params(run_config, rng)["encoder"])
    flat_saved = traverse_util.flatten_dict(jax.device_get(saved))
    layers = run_config.encoder.num_hidden_layers
    for path, value in start.items():
        if "layer" in path:  # stacked: the top row is fresh, the rows below are the pretrained ones
            np.testing.assert_array_equal(np.asarray(value[-1]), np.asarray(random[path][-1]))
            np.testing.assert_array_equal(np.asarray(value[: layers - 1]), np.asarray(flat_saved[path][: layers - 1]))
        else:
            np.testing.assert_array_equal(np.asarray(value), np.asarray(flat_saved[path]))
    assert any("layer" in path and not np.array_equal(np.asarray(start[path][-1]), np.asarray(flat_saved[path][-1]))
               for path in start)


def test_pretrain_config_variants(shared_data):
    default, large = pretrain_configs.get_config(), pretrain_configs.get_config("large")
    # The default corpus: SciREX once, the two homepage datasets upsampled; every entry resolves.
    entries = [split_repeat(e) for e in split_entries(default.pretrain.files)]
    assert [(pathlib.Path(p).parent.name, n) for p, n in entries] == [
        ("scirex", 1), ("scholar-xl", pretrain_configs.TASK_TEXT_REPEAT), ("profiling-07", pretrain_configs.TASK_TEXT_REPEAT)]
    assert all(expand_paths([p]) for p, _ in entries)
    assert default.model.encoder.hidden_size == 128 and default.model.encoder.lora_rank == 0
    assert (default.pretrain.mask_probability, default.pretrain.mask_token, default.pretrain.random_token) == (0.15, 0.8, 0.1)
    assert large.model.encoder.hidden_size == 1024 and large.model.encoder.num_hidden_layers == 24
    assert large.model.pretrained == "microsoft/deberta-v3-large"
    with pytest.raises(ValueError, match="unknown variant"):
        pretrain_configs.get_config("huge")


def test_killed_pretraining_resumes_to_the_same_encoder(pretrained, tmp_path):
    config, workdir, summary = pretrained
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    shutil.rmtree(copy / "checkpoints" / "latest" / str(summary["steps"]))  # "killed" after step 20's save
    shutil.rmtree(copy / ENCODER_DIR)
    again = pretrain(config, copy)
    assert again["curve"] == summary["curve"]
    _, first = convert.load_encoder(workdir / ENCODER_DIR)
    _, second = convert.load_encoder(copy / ENCODER_DIR)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_pretraining_refuses_lora():
    config = pretrain_configs.get_config("tiny")
    config.model.encoder.lora_rank = 4
    with pytest.raises(ValueError, match="lora_rank=0"):
        encoder_config_of(config, 626)
