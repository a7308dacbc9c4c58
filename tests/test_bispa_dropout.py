"""BiSPA dropout in training mode: band == reference with a fixed rng (forward and gradients), the
attention-prob dropout changes the output, and the masks are drawn in one canonical (band) layout."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sener_jax.band_layout import band_cell_mask, band_from_dense
from sener_jax.models.bispa_dropout import band_chunk_prob_scale, dense_from_band, dense_row_prob_scale
from sener_jax.models.span_head import SpanHead, SpanHeadConfig

D_IN = 16


def _setup(length, window, alignment="original", attention_dropout=True, seed=0):
    cfg = SpanHeadConfig(
        num_types=2, max_span_words=window + 1, channels=8, biaffine_dim=6, num_blocks=1,
        bispa_alignment=alignment, row_chunk=5, mlp_dropout=0.4, bispa_dropout=0.2,
        bispa_attention_dropout=attention_dropout,
    )
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(2, length, D_IN)), jnp.float32)
    mask = np.ones((2, length), bool)
    mask[1, length - 3:] = False
    mask = jnp.asarray(mask)
    params = jax.jit(lambda k: SpanHead(cfg).init(k, x, mask)["params"])(jax.random.PRNGKey(seed))
    return cfg, x, mask, params


def _train_loss(cfg):
    def loss(p, x, m, weights, key):
        out = SpanHead(cfg).apply({"params": p}, x, m, deterministic=False, rngs={"dropout": key})
        valid = band_cell_mask(m, cfg.band_half_width)[..., None]
        return jnp.sum(jnp.where(valid, out * weights, 0.0)), out

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


@pytest.mark.parametrize("length,window,alignment", [(9, 3, "original")])
def test_training_mode_band_equals_reference_forward_and_gradients(length, window, alignment):
    cfg, x, mask, params = _setup(length, window, alignment)
    weights = jnp.asarray(np.random.default_rng(1).normal(size=(2, length, 2 * window + 1, 2)), jnp.float32)
    key = jax.random.PRNGKey(5)
    (v_band, out_band), g_band = _train_loss(cfg)(params, x, mask, weights, key)
    (v_ref, out_ref), g_ref = _train_loss(dataclasses.replace(cfg, impl="reference"))(params, x, mask, weights, key)
    valid = np.asarray(band_cell_mask(mask, window))
    scale = float(np.abs(np.asarray(out_ref)[valid]).max())
    np.testing.assert_allclose(np.asarray(out_band)[valid], np.asarray(out_ref)[valid], atol=1e-5 * scale)
    np.testing.assert_allclose(float(v_band), float(v_ref), rtol=1e-5)
    for (path, a), b in zip(jax.tree.flatten_with_path(g_band)[0], jax.tree.leaves(g_ref)):
        err = float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-30))
        assert err <= 1e-4, (jax.tree_util.keystr(path), err)


def test_attention_prob_dropout_changes_the_output_and_only_in_training():
    cfg, x, mask, params = _setup(11, 3)
    no_att = dataclasses.replace(cfg, bispa_attention_dropout=False)
    key = jax.random.PRNGKey(3)
    run = lambda c, det: SpanHead(c).apply({"params": params}, x, mask, deterministic=det,  # noqa: E731
                                           rngs=None if det else {"dropout": key})
    valid = np.asarray(band_cell_mask(mask, 3))
    with_att, without_att = np.asarray(run(cfg, False)), np.asarray(run(no_att, False))
    assert np.abs(with_att - without_att)[valid].max() > 1e-3  # the prob dropout is really applied
    # deterministic: the switch changes nothing
    np.testing.assert_array_equal(np.asarray(run(cfg, True)), np.asarray(run(no_att, True)))


def test_canonical_masks_map_from_band_to_dense():
    window, length = 2, 7
    band = jnp.asarray(np.random.default_rng(0).normal(size=(1, length, 2 * window + 1, 3)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(band_from_dense(dense_from_band(band, window), window))[
        np.asarray(band_cell_mask(jnp.ones((1, length), bool), window))],
        np.asarray(band)[np.asarray(band_cell_mask(jnp.ones((1, length), bool), window))])
    key = jax.random.PRNGKey(0)
    chunk = np.asarray(band_chunk_prob_scale(key, jnp.asarray(2), 1, 3, 2 * window + 1, 0.5))  # rows 2, 3, 4
    assert set(np.unique(chunk)) <= {0.0, 2.0} and 0 < (chunk == 0).mean() < 1
    for r in range(3):
        row = 2 + r
        dense = np.asarray(dense_row_prob_scale(key, jnp.asarray(row), 1, length, window, 0.5))
        for j in range(length):
            for jj in range(length):
                if abs(j - row) <= window and abs(jj - row) <= window:
                    assert dense[0, j, jj] == chunk[0, r, j - row + window, jj - row + window]
