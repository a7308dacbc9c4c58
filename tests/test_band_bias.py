"""The band-bias options (EncoderConfig.band_bias): every mode equals the float32 reference in a
float32 run (forward and gradients, 1e-5), at several shapes with padding; "compute" really
stores the bias in a bfloat16 run's compute dtype; unknown modes are refused by name."""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sener_jax.models.disentangled_attention import (
    BAND_BIAS_MODES, AttentionSettings, RelativeGeometry, disentangled_attention, scaled_band_bias,
)
from tests.deberta_helpers import encoder_grad_fn, random_encoder_params
from tests.tiny_configs import ODD_WIDTH, tiny_encoder

GEOMETRY = RelativeGeometry(span=8, position_buckets=8, max_relative_positions=16)
HEADS, DIM = 2, 4
SCALE = math.sqrt(DIM * 3)
OPTIONS = [mode for mode in BAND_BIAS_MODES if mode != "float32"]


def _inputs(n: int, lengths: list[int], seed: int):
    rng = np.random.default_rng(seed)
    normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
    q, k, v = (normal(len(lengths), HEADS, n, DIM) for _ in range(3))
    tables = normal(HEADS, 2 * GEOMETRY.span, DIM), normal(HEADS, 2 * GEOMETRY.span, DIM)
    mask = jnp.asarray(np.arange(n)[None, :] < np.asarray(lengths)[:, None])
    return (q, k, v, *tables, mask), normal(len(lengths), HEADS, n, DIM)


@functools.lru_cache(maxsize=None)
def _value_and_grad(settings: AttentionSettings):
    def loss(q, k, v, pos_key, pos_query, mask, projection):
        out = disentangled_attention(q, k, v, pos_key, pos_query, mask, geometry=GEOMETRY, scale=SCALE,
                                     settings=settings)
        return jnp.sum(out * projection), out

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))


@pytest.mark.parametrize("mode", OPTIONS)
@pytest.mark.parametrize("pattern", ["arrow", "sliding"])
@pytest.mark.parametrize("n, lengths, window", [(16, [16, 9], 3), (23, [23, 5, 17], 5), (12, [7], 20)])
def test_band_bias_mode_equals_float32_reference(mode, pattern, n, lengths, window):
    args, projection = _inputs(n, lengths, seed=n)
    reference = AttentionSettings(pattern=pattern, impl="xla", window=window)
    (_, ref_out), ref_grads = _value_and_grad(reference)(*args, projection)
    (_, out), grads = _value_and_grad(dataclasses.replace(reference, band_bias=mode))(*args, projection)
    np.testing.assert_allclose(out, ref_out, atol=1e-5, rtol=0)
    for name, grad, ref_grad in zip(("q", "k", "v", "pos_key", "pos_query"), grads, ref_grads):
        np.testing.assert_allclose(grad, ref_grad, atol=1e-5, rtol=0, err_msg=f"{mode}: gradient of {name}")


@pytest.mark.parametrize("mode", OPTIONS)
def test_encoder_band_bias_mode_equals_float32_reference(mode):
    """The whole (scanned, rematerialised) encoder: output and every parameter gradient."""
    config = tiny_encoder(**ODD_WIDTH, num_hidden_layers=2, remat="layer", band_bias="float32")
    params = random_encoder_params(config, seed=0)
    rng = np.random.default_rng(2)
    ids = jnp.asarray(rng.integers(1, config.vocab_size, size=(2, 30)), jnp.int32)
    mask = jnp.asarray(np.arange(30)[None, :] < np.asarray([30, 19])[:, None], jnp.int32)
    projection = jnp.asarray(rng.normal(size=(2, 30, config.hidden_size)), jnp.float32)
    (_, ref), ref_grads = encoder_grad_fn(config)(params, ids, mask, projection)
    (_, out), grads = encoder_grad_fn(dataclasses.replace(config, band_bias=mode))(params, ids, mask, projection)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
    for (path, grad), ref_grad in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(grad, ref_grad, atol=1e-5, rtol=0, err_msg=f"{mode}: {jax.tree_util.keystr(path)}")


def test_compute_mode_stores_the_bias_in_the_compute_dtype():
    args, _ = _inputs(16, [16, 9], seed=0)
    q, k, _, pos_key, pos_query, _ = (x.astype(jnp.bfloat16) if x.dtype == jnp.float32 else x for x in args)
    kwargs = dict(geometry=GEOMETRY, window=3, scale=SCALE)
    low = scaled_band_bias(q, k, pos_key, pos_query, mode="compute", **kwargs)
    full = scaled_band_bias(q, k, pos_key, pos_query, mode="float32", **kwargs)
    assert low.dtype == jnp.bfloat16 and full.dtype == jnp.float32
    # One bfloat16 rounding of each dot and of the sum: within a few bfloat16 ulps of the float32 bias.
    np.testing.assert_allclose(np.asarray(low, np.float32), full, rtol=0, atol=4 * 2**-8 * float(jnp.max(jnp.abs(full))))


def test_unknown_band_bias_mode_is_refused_by_name():
    with pytest.raises(ValueError, match="EncoderConfig.band_bias"):
        tiny_encoder(band_bias="float16")
    args, _ = _inputs(8, [8], seed=0)
    with pytest.raises(ValueError, match="band_bias must be one of"):
        scaled_band_bias(*args[:2], *args[3:5], geometry=GEOMETRY, window=2, scale=SCALE, mode="bf16")
