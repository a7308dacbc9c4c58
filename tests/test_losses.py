"""span_bce_loss against a plain per-cell loop, stability, masking and row weights."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sener_jax import train_step
from sener_jax.losses import span_bce_loss
from sener_jax.band_layout import band_cell_mask
from sener_jax.models.span_head import INVALID_LOGIT


def _loop_loss(logits, labels, cell_mask, row_weight, positive_weight=1.0):
    per_row = []
    for b in range(logits.shape[0]):
        total = 0.0
        for i, k, r in np.ndindex(*logits.shape[1:]):
            if cell_mask[b, i, k]:
                p = 1.0 / (1.0 + np.exp(-float(logits[b, i, k, r])))
                y = float(labels[b, i, k, r])
                total -= positive_weight * y * np.log(p) + (1 - y) * np.log(1 - p)
        per_row.append(total)
    return float(np.dot(row_weight, per_row) / np.sum(row_weight))


@pytest.mark.parametrize("row_weight", [None, [1.0, 0.0, 2.0]])
def test_matches_per_cell_formula(row_weight):
    rng = np.random.default_rng(0)
    word_mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], bool)
    cell_mask = np.asarray(band_cell_mask(jnp.asarray(word_mask), 2))
    logits = rng.normal(scale=3.0, size=(3, 5, 5, 2)).astype(np.float32)
    labels = (rng.random((3, 5, 5, 2)) < 0.3).astype(np.uint8)
    weights = np.ones(3) if row_weight is None else np.asarray(row_weight)
    expected = _loop_loss(logits, labels, cell_mask, weights)
    got = span_bce_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(cell_mask),
                        None if row_weight is None else jnp.asarray(row_weight))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_stable_and_masked():
    cell_mask = jnp.asarray([[[True, True, False]]])
    logits = jnp.asarray([[[[200.0, -200.0], [-200.0, 0.0], [INVALID_LOGIT, INVALID_LOGIT]]]])
    labels = jnp.asarray([[[[1, 0], [1, 1], [1, 1]]]], jnp.uint8)
    value, grad = jax.value_and_grad(span_bce_loss)(logits, labels, cell_mask)
    np.testing.assert_allclose(float(value), 200.0 + np.log(2.0), rtol=1e-6)  # only the two wrong cells cost
    assert np.isfinite(np.asarray(grad)).all()
    assert float(jnp.abs(grad[0, 0, 2]).max()) == 0.0


def test_all_zero_row_weights_give_zero_and_shapes_are_checked():
    logits = jnp.zeros((2, 3, 3, 1))
    labels = jnp.zeros((2, 3, 3, 1))
    mask = jnp.ones((2, 3, 3), bool)
    assert float(span_bce_loss(logits, labels, mask, jnp.zeros(2))) == 0.0
    np.testing.assert_allclose(float(span_bce_loss(logits, labels, mask)), 9 * np.log(2.0), rtol=1e-6)
    with pytest.raises(ValueError, match="cell_mask"):
        span_bce_loss(logits, labels, mask[:, :2])
    with pytest.raises(ValueError, match="row_weight"):
        span_bce_loss(logits, labels, mask, jnp.ones(3))


@pytest.mark.parametrize("positive_weight", [1.0, 0.5, 4.0])
def test_positive_weight_scales_the_positive_cells(positive_weight):
    rng = np.random.default_rng(3)
    word_mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], bool)
    cell_mask = np.asarray(band_cell_mask(jnp.asarray(word_mask), 3))
    logits = rng.normal(scale=2.0, size=cell_mask.shape + (3,)).astype(np.float32)
    labels = (rng.random(logits.shape) < 0.2).astype(np.int32)
    got = float(span_bce_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(cell_mask),
                              positive_weight=positive_weight))
    want = _loop_loss(logits, labels, cell_mask, np.ones(2), positive_weight)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    if positive_weight != 1.0:  # the option changes the loss: it is not silently ignored
        assert abs(got - float(span_bce_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(cell_mask)))) > 1e-3


def test_positive_weight_must_be_positive():
    # checked before anything is built, so no model is needed
    with pytest.raises(ValueError, match="train.positive_weight"):
        train_step.make_train_step(None, None, None, positive_weight=0.0)
