"""Replaced-token detection (`pretrain.objective="rtd"`, sener_jax/models/rtd.py): the inverse-CDF
sampler against jax.random.categorical, the corruption and labels against a loop, DeBERTa-v3's
gradient-disentangled embedding sharing, and a tiny RTD pretraining run end to end."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from configs import pretrain as pretrain_configs
from sener_jax import convert, train_step
from sener_jax.models.deberta import EncoderConfig, init_encoder_params
from sener_jax.models.rtd import (
    corrupt_with_samples,
    discriminator_encoder_params,
    init_rtd_head_params,
    rtd_loss_sums,
    sample_columns,
)
from sener_jax.models.mlm_head import word_embeddings
from sener_jax.pretrain import ENCODER_DIR, pretrain
from sener_jax.pretrain_step import objective_of, saved_encoder_params

from tests.test_pretrain import tiny_pretrain_config, write_corpus


def tiny_encoder(vocab=40) -> EncoderConfig:
    return EncoderConfig.from_dict(dict(pretrain_configs.get_config("tiny").model.encoder.to_dict(), vocab_size=vocab))


@pytest.mark.parametrize("shape", [(3, 7), (2, 4, 30)])
def test_inverse_cdf_sampling_matches_categorical(shape):
    logits = jax.random.normal(jax.random.PRNGKey(1), shape) * 2.0
    draws = 20000
    keys = jax.random.split(jax.random.PRNGKey(2), draws)
    ours = jax.vmap(lambda k: sample_columns(logits, jax.random.uniform(k, shape[:-1])))(keys)
    reference = jax.vmap(lambda k: jax.random.categorical(k, logits))(keys)
    probs = np.asarray(jax.nn.softmax(logits))
    for samples in (ours, reference):
        freq = np.asarray(jax.nn.one_hot(samples, shape[-1])).mean(0)
        np.testing.assert_allclose(freq, probs, atol=0.015)


def test_inverse_cdf_sampling_is_exact_at_the_boundaries():
    logits = jnp.log(jnp.array([[0.1, 0.0, 0.2, 0.7]]) + 1e-30)
    uniform = jnp.array([0.0, 0.0999, 0.1001, 0.2999, 0.3001, 0.9999])[:, None]
    columns = jax.vmap(lambda u: sample_columns(logits, u))(uniform)[:, 0]
    # the zero-probability column 1 is never drawn
    assert columns.tolist() == [0, 0, 2, 2, 3, 3]


def loop_corruption(ids, positions, targets, weights, columns, output_ids):
    corrupted, labels = np.array(ids), np.zeros(ids.shape, np.int32)
    for b in range(ids.shape[0]):
        for slot in range(positions.shape[1]):
            if weights[b, slot] > 0:
                corrupted[b, positions[b, slot]] = output_ids[columns[b, slot]]
                labels[b, positions[b, slot]] = int(columns[b, slot] != targets[b, slot])
    return corrupted, labels


@pytest.mark.parametrize("restricted", [False, True])
def test_corruption_and_labels_match_a_loop(restricted):
    rng = np.random.default_rng(0)
    rows, length, slots, vocab = 3, 20, 6, 50
    output_ids = np.sort(rng.choice(vocab, 12, replace=False)) if restricted else np.arange(vocab)
    ids = rng.integers(0, vocab, (rows, length)).astype(np.int32)
    positions = np.stack([np.sort(rng.choice(np.arange(1, length), slots, replace=False)) for _ in range(rows)])
    weights = np.ones((rows, slots), np.float32)
    weights[1, 4:] = 0  # padding slots (position 0 in real batches; here anywhere) must change nothing
    weights[2, :] = 0
    positions[1, 4:] = 0
    targets = rng.integers(0, len(output_ids), (rows, slots)).astype(np.int32)
    columns = np.where(rng.random((rows, slots)) < 0.4, targets, rng.integers(0, len(output_ids), (rows, slots)))
    got = corrupt_with_samples(jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(targets), jnp.asarray(weights),
                               jnp.asarray(columns, jnp.int32), output_ids if restricted else None)
    expected = loop_corruption(ids, positions, targets, weights, columns, output_ids)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert expected[1].sum() > 0 and (expected[1] < (columns != targets).sum()).all()


def rtd_params_and_batch(vocab=40, layers=1):
    config = tiny_encoder(vocab)
    key = jax.random.PRNGKey(0)
    params = {"encoder": init_encoder_params(config, key), "head": init_rtd_head_params(config, layers, key)}
    # a non-zero delta, so that the discriminator's embeddings differ from the generator's
    params["head"]["embedding_delta"] = 0.01 * jax.random.normal(key, params["head"]["embedding_delta"].shape)
    rng = np.random.default_rng(1)
    batch = {"input_ids": jnp.asarray(rng.integers(5, vocab, (2, 16)), jnp.int32),
             "attention_mask": jnp.asarray(np.r_[[[1] * 16], [[1] * 11 + [0] * 5]], jnp.int32),
             "mlm_positions": jnp.asarray([[2, 5, 9], [1, 3, 0]], jnp.int32),
             "mlm_targets": jnp.asarray(rng.integers(5, vocab, (2, 3)), jnp.int32),
             "mlm_weights": jnp.asarray([[1, 1, 1], [1, 1, 0]], jnp.float32)}
    return config, params, batch


def test_embeddings_are_shared_the_deberta_v3_way():
    """GDES: the generator's MLM loss trains E and never delta; the discriminator's loss trains delta and
    never E (stop-gradient); no gradient flows through the generator's samples."""
    config, params, batch = rtd_params_and_batch()
    key = jax.random.PRNGKey(3)

    @jax.jit  # one compile for both gradients: op-by-op autodiff of the two encoders is far slower
    def grads(p):
        return tuple(jax.grad(lambda q, t=term: rtd_loss_sums(config, 1, q, batch, key)[t])(p) for term in ("mlm", "rtd"))

    mlm, rtd = grads(params)
    norm = lambda tree: float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(tree)))  # noqa: E731
    assert norm(word_embeddings(mlm["encoder"])) > 0 and norm(mlm["head"]["embedding_delta"]) == 0
    assert norm(word_embeddings(rtd["encoder"])) == 0 and norm(rtd["head"]["embedding_delta"]) > 0
    assert norm(rtd["head"]["generator"]) == 0 and norm(rtd["head"]["transform"]) == 0  # samples carry no gradient
    assert norm(mlm["encoder"]["encoder"]) == 0 and norm(mlm["head"]["discriminator"]) == 0
    saved = saved_encoder_params(params, rtd_objective(config))
    np.testing.assert_array_equal(np.asarray(word_embeddings(saved)),
                                  np.asarray(word_embeddings(params["encoder"]) + params["head"]["embedding_delta"]))
    np.testing.assert_array_equal(np.asarray(word_embeddings(discriminator_encoder_params(params))),
                                  np.asarray(word_embeddings(saved)))


def rtd_objective(encoder, **values):
    config = pretrain_configs.get_config("tiny")
    config.pretrain.update(dict(objective="rtd", **values))
    return objective_of(config, encoder)


def test_objective_settings_are_checked():
    encoder = tiny_encoder()
    assert rtd_objective(encoder).generator_layers == max(1, encoder.num_hidden_layers // 2)
    assert rtd_objective(encoder, generator_layers=2).generator_layers == 2
    with pytest.raises(ValueError, match="pretrain.generator_layers must be in 1..2"):
        rtd_objective(encoder, generator_layers=3)
    with pytest.raises(ValueError, match="pretrain.rtd_weight"):
        rtd_objective(encoder, rtd_weight=0.0)
    config = pretrain_configs.get_config("tiny")
    config.pretrain.objective = "electra"
    with pytest.raises(ValueError, match="pretrain.objective must be one of"):
        objective_of(config, encoder)


def test_rtd_pretraining_learns_and_writes_the_discriminator(tmp_path):
    config = tiny_pretrain_config(write_corpus(tmp_path / "corpus"), steps=40)
    config.pretrain.objective = "rtd"
    summary = pretrain(config, tmp_path / "run")
    assert summary["objective"] == {"name": "rtd", "generator_layers": 1, "rtd_weight": 50.0}
    # the generator learns its MLM task; the discriminator beats chance and its own start
    assert summary["probe_loss_after"] < summary["probe_loss_before"] - 0.3, summary
    assert summary["probe_rtd_after"] < summary["probe_rtd_before"] - 0.1, summary
    assert summary["probe_rtd_after"] < np.log(2) - 0.1 and summary["probe_rtd_accuracy_after"] > 0.8
    # WORKDIR/encoder is the discriminator alone, loadable by fine-tuning like an MLM encoder
    encoder_config, saved = convert.load_encoder(tmp_path / "run" / ENCODER_DIR)
    assert encoder_config.num_hidden_layers == config.model.encoder.num_hidden_layers
    assert set(saved) == {"embeddings", "encoder"}
    finetune = demo.get_config("tiny")
    finetune.model.pretrained = str(tmp_path / "run" / ENCODER_DIR)
    start = train_step.initial_params(finetune, train_step.model_config_from(finetune, 626, 7), jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(word_embeddings(start["encoder"])), np.asarray(word_embeddings(saved)))
