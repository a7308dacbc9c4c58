"""SeNER model assembly: subword -> word max-pooling and the band logits of the whole model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sener_jax.models.deberta import DebertaEncoder
from sener_jax.models.sener import SenerConfig, band_logits, init_params, pool_words_reference, pool_words_segment
from sener_jax.models.span_head import SpanHead
from tests.tiny_configs import tiny_encoder, tiny_head

ENCODER = tiny_encoder(lora_rank=2)
HEAD = tiny_head()


def random_word_index(rng, batch, n_tokens, n_words):
    """Rows of [CLS] + words of 1..3 subwords + [SEP] + padding, some words without tokens."""
    word_index = np.full((batch, n_tokens), -1, np.int32)
    for b in range(batch):
        t, w = 1, 0
        while w < n_words and t < n_tokens - 1:
            pieces = rng.integers(0, 4)  # 0: a word that tokenizes to nothing
            take = min(pieces, n_tokens - 1 - t)
            word_index[b, t : t + take] = w
            t, w = t + take, w + 1
    return word_index


@pytest.mark.parametrize("batch, n_tokens, n_words, dim", [(1, 6, 3, 2), (3, 17, 9, 5), (2, 40, 30, 8)])
def test_segment_pooling_matches_dense_reference(batch, n_tokens, n_words, dim):
    rng = np.random.default_rng(n_tokens)
    word_index = jnp.asarray(random_word_index(rng, batch, n_tokens, n_words))
    states = jnp.asarray(rng.normal(size=(batch, n_tokens, dim)), jnp.float32)
    fast = pool_words_segment(states, word_index, n_words)
    ref = pool_words_reference(states, word_index, n_words)
    np.testing.assert_allclose(fast, ref, atol=1e-6)
    # A word with no token is a zero vector; a word's vector is the max of its tokens.
    for b in range(batch):
        for w in range(n_words):
            members = np.asarray(states[b][np.asarray(word_index[b]) == w])
            expected = members.max(axis=0) if len(members) else np.zeros(dim)
            np.testing.assert_allclose(fast[b, w], expected, atol=1e-6)
    grad_fast = jax.grad(lambda s: jnp.sum(jnp.sin(pool_words_segment(s, word_index, n_words))))(states)
    grad_ref = jax.grad(lambda s: jnp.sum(jnp.sin(pool_words_reference(s, word_index, n_words))))(states)
    np.testing.assert_allclose(grad_fast, grad_ref, atol=1e-6)


def _inputs(rng, batch=2, n_tokens=20, n_words=10):
    word_index = random_word_index(rng, batch, n_tokens, n_words)
    word_index[1, 12:] = -1  # a shorter second row
    attention = np.zeros((batch, n_tokens), np.int32)
    for b in range(batch):
        last = np.nonzero(word_index[b] >= 0)[0].max()
        attention[b, : last + 2] = 1  # words, [CLS] and [SEP]
    input_ids = rng.integers(5, ENCODER.vocab_size, (batch, n_tokens)).astype(np.int32) * attention
    word_mask = np.zeros((batch, n_words), bool)
    for b in range(batch):
        word_mask[b, : word_index[b].max() + 1] = True
    return tuple(jnp.asarray(x) for x in (input_ids, attention, word_index, word_mask))


def test_band_logits_shapes_lora_paths_and_pooling_impls():
    config = SenerConfig(ENCODER, HEAD)
    params = init_params(config, jax.random.PRNGKey(0))
    lora = params["encoder"]["encoder"]["layer"]["attention"]["self"]["value_proj"]  # stacked: (layers, ...)
    assert lora["lora_a"].shape == (1, 16, 2) and lora["lora_b"].shape == (1, 2, 16)
    inputs = _inputs(np.random.default_rng(0))
    fn = jax.jit(band_logits, static_argnums=0)
    logits = fn(config, params, *inputs)
    assert logits.shape == (2, 10, 2 * HEAD.band_half_width + 1, HEAD.num_types) and logits.dtype == jnp.float32
    word_mask = np.asarray(inputs[3])
    assert np.all(np.asarray(logits)[1, ~word_mask[1]] < -1e3)  # padding words: invalid cells
    assert np.all(np.isfinite(np.asarray(logits)))
    # Pooling words by hand from the encoder output gives the same logits (the pooling path is wired in).
    @jax.jit
    def by_hand_fn(params, input_ids, attention, word_index, word_mask):
        hidden = DebertaEncoder(ENCODER).apply({"params": params["encoder"]}, input_ids, attention)
        words = pool_words_reference(hidden, word_index, word_mask.shape[1])
        return SpanHead(HEAD).apply({"params": params["head"]}, words, word_mask)

    by_hand = by_hand_fn(params, *inputs)
    np.testing.assert_allclose(logits, by_hand, atol=1e-5)
    # Dropout needs a key, and a key changes the output only through dropout.
    with pytest.raises(ValueError, match="rngs"):
        band_logits(config, params, *inputs, deterministic=False)


def test_unknown_pool_impl_is_an_error():
    with pytest.raises(ValueError, match="pool_impl"):
        SenerConfig(ENCODER, HEAD, pool_impl="mean")
    round_trip = SenerConfig.from_dict(SenerConfig(ENCODER, HEAD).to_dict())
    assert round_trip == SenerConfig(ENCODER, HEAD)
