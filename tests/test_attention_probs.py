"""The shared masked softmax and attention-prob dropout (sener_jax.ops.attention_probs)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sener_jax.ops.attention_probs import dropout_probs, masked_softmax


def _case(seed=0):
    rng = np.random.default_rng(seed)
    logits = jnp.asarray(rng.normal(size=(3, 4, 6)) * 3, jnp.float32)
    valid = rng.random((3, 4, 6)) < 0.5
    valid[0, 0] = False  # a fully masked row
    valid[1, 2] = True
    return logits, jnp.asarray(valid)


def test_valid_rows_are_the_softmax_over_valid_entries_in_both_modes():
    logits, valid = _case()
    x, v = np.asarray(logits, np.float64), np.asarray(valid)
    e = np.where(v, np.exp(x - x.max(-1, keepdims=True)), 0.0)
    expected = e / np.maximum(e.sum(-1, keepdims=True), 1e-300)
    has_key = v.any(-1)
    for mode in ("zeros", "uniform"):
        probs = np.asarray(masked_softmax(logits, valid, fully_masked=mode))
        np.testing.assert_allclose(probs[has_key], expected[has_key], rtol=1e-6, atol=1e-7)
        assert not probs[~v & has_key[..., None]].any()


def test_fully_masked_rows():
    logits, valid = _case()
    np.testing.assert_array_equal(np.asarray(masked_softmax(logits, valid, fully_masked="zeros"))[0, 0], 0.0)
    np.testing.assert_allclose(np.asarray(masked_softmax(logits, valid, fully_masked="uniform"))[0, 0], 1 / 6)
    grad = jax.grad(lambda x: jnp.sum(masked_softmax(x, valid) ** 2))(logits)
    assert np.all(np.isfinite(np.asarray(grad)))
    with pytest.raises(ValueError, match="fully_masked"):
        masked_softmax(logits, valid, fully_masked="nan")


def test_extra_logit_equals_a_concatenated_always_valid_entry():
    logits, valid = _case(1)
    extra = jnp.asarray(np.random.default_rng(2).normal(size=logits.shape[:-1]), jnp.float32)
    probs, extra_prob = masked_softmax(logits, valid, extra_logit=extra)
    joined = masked_softmax(
        jnp.concatenate([extra[..., None], logits], -1),
        jnp.concatenate([jnp.ones(valid.shape[:-1] + (1,), bool), valid], -1),
    )
    np.testing.assert_allclose(np.asarray(extra_prob), np.asarray(joined[..., 0]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(probs), np.asarray(joined[..., 1:]), rtol=1e-6, atol=1e-8)
    assert np.all(np.asarray(extra_prob)[0, 0] == 1.0)  # the fully masked row keeps only the extra key


def test_dropout_probs():
    probs = jnp.full((200, 50), 0.02, jnp.float32)
    assert dropout_probs(probs, 0.0, jax.random.PRNGKey(0)) is probs
    assert dropout_probs(probs, 0.5, None) is probs
    dropped = np.asarray(dropout_probs(probs, 0.25, jax.random.PRNGKey(0)))
    kept = dropped != 0
    np.testing.assert_allclose(dropped[kept], 0.02 / 0.75, rtol=1e-6)
    assert abs(kept.mean() - 0.75) < 0.02
