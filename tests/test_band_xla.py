"""The block-sparse XLA banded attention equals the dense reference (forward 1e-5, gradients
1e-4 relative) and its compiled memory grows linearly with the length."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sener_jax.ops.band_reference import banded_attention_reference
from sener_jax.ops.band_xla import banded_attention_xla
from sener_jax.ops.banded_attention import banded_attention


def _inputs(batch, heads, n, dim, window, with_global, keep, seed):
    rng = np.random.default_rng(seed)
    normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
    key_mask = jnp.asarray(rng.random((batch, n)) < keep)
    args = [normal(batch, heads, n, dim) for _ in range(3)] + [normal(batch, heads, n, 2 * window + 1), key_mask]
    extra = (normal(batch, heads, n), normal(batch, heads, dim)) if with_global else (None, None)
    return args, extra


# (batch, heads, n, dim, window, block, with_global, fraction of valid keys)
CASES = [
    (2, 2, 37, 4, 5, None, True, 0.7),  # N not a multiple of the block
    (1, 1, 1, 3, 1, None, True, 1.0),  # a single token
    (2, 1, 10, 2, 20, None, False, 0.8),  # window larger than the sequence
    (2, 3, 33, 4, 1, None, False, 0.6),  # window 1
    (1, 2, 50, 4, 7, 3, True, 0.9),  # block smaller than the window (several neighbour blocks)
    (1, 2, 50, 4, 3, 16, True, 0.9),  # block larger than the window
    (2, 2, 24, 4, 4, None, True, 0.0),  # every key masked: global key only
    (2, 2, 24, 4, 4, None, False, 0.1),  # rows without any valid key -> zeros
]


@pytest.mark.parametrize("batch, heads, n, dim, window, block, with_global, keep", CASES)
def test_forward_and_gradients_match_reference(batch, heads, n, dim, window, block, with_global, keep):
    (q, k, v, bias, key_mask), (global_logit, global_value) = _inputs(
        batch, heads, n, dim, window, with_global, keep, seed=n * 31 + window
    )
    differentiable = (q, k, v, bias) + ((global_logit, global_value) if with_global else ())
    projection = jnp.asarray(np.random.default_rng(n).normal(size=(batch, heads, n, dim)), jnp.float32)

    def loss(fn, *tensors):
        q, k, v, bias = tensors[:4]
        extra = dict(global_logit=tensors[4], global_value=tensors[5]) if with_global else {}
        out = fn(q, k, v, bias, key_mask, window=window, **extra)
        return jnp.sum(out * projection), out

    xla = functools.partial(banded_attention_xla, block=block)
    argnums = tuple(range(len(differentiable)))
    (_, out), grads = jax.jit(jax.value_and_grad(functools.partial(loss, xla), argnums, has_aux=True))(*differentiable)
    (_, ref), ref_grads = jax.jit(
        jax.value_and_grad(functools.partial(loss, banded_attention_reference), argnums, has_aux=True)
    )(*differentiable)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
    assert np.all(np.isfinite(out))
    for name, grad, ref_grad in zip(["q", "k", "v", "bias", "global_logit", "global_value"], grads, ref_grads):
        scale = max(float(jnp.max(jnp.abs(ref_grad))), 1e-6)
        error = float(jnp.max(jnp.abs(grad - ref_grad))) / scale
        assert error <= 1e-4, f"d/d{name}: relative error {error:.3g}"


def test_dispatcher_routes_and_refuses_unknown_names():
    (q, k, v, bias, key_mask), _ = _inputs(1, 2, 12, 4, 3, False, 0.8, seed=0)

    @jax.jit
    def both(q, k, v, bias, key_mask):
        return (banded_attention(q, k, v, bias, key_mask, window=3, impl="reference"),
                banded_attention(q, k, v, bias, key_mask, window=3, impl="xla", block=2))

    ref, out = both(q, k, v, bias, key_mask)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    with pytest.raises(ValueError, match="impl must be one of"):
        banded_attention(q, k, v, bias, key_mask, window=3, impl="cuda")
    with pytest.raises(ValueError, match="only implemented for impl='xla'"):
        banded_attention(q, k, v, bias, key_mask, window=3, impl="reference", dropout_rate=0.1)
    with pytest.raises(ValueError, match="bias must have shape"):
        banded_attention_xla(q, k, v, bias[..., :-1], key_mask, window=3)


def test_dropout_keeps_expectation_and_masking():
    (q, k, v, bias, key_mask), (global_logit, global_value) = _inputs(2, 2, 20, 4, 3, True, 0.8, seed=1)
    samples = 256

    @jax.jit
    def run(v, rng):
        kwargs = dict(window=3, global_logit=global_logit, global_value=global_value)
        clean = banded_attention_xla(q, k, v, bias, key_mask, **kwargs)
        dropped = jax.vmap(
            lambda r: banded_attention_xla(q, k, v, bias, key_mask, dropout_rate=0.3, dropout_rng=r, **kwargs)
        )(jax.random.split(rng, samples))
        return clean, dropped

    # rbg keys: threefry bit generation takes XLA:CPU several seconds to compile.
    key = jax.random.key(0, impl="rbg")
    clean, dropped = run(v, key)
    assert not np.allclose(dropped[0], clean)
    # Inverted dropout is unbiased: the sample mean is within a few standard errors of the clean output.
    standard_error = jnp.std(dropped, axis=0) / np.sqrt(samples)
    assert np.all(jnp.abs(jnp.mean(dropped, axis=0) - clean) <= 5 * standard_error + 1e-5)
    # A masked key stays invisible under dropout too (same masks, changed values of masked keys).
    v_changed = v.at[:, :, ~np.asarray(key_mask[0])].add(100.0)
    _, dropped_changed = run(v_changed, key)
    np.testing.assert_allclose(dropped_changed[:, 0], dropped[:, 0], atol=1e-4)


def _temp_bytes(n: int, window: int = 64) -> int:
    shape = jax.ShapeDtypeStruct((1, 2, n, 16), jnp.float32)
    bias = jax.ShapeDtypeStruct((1, 2, n, 2 * window + 1), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, n), jnp.bool_)

    def loss(q, k, v, b, m):
        return jnp.sum(banded_attention_xla(q, k, v, b, m, window=window) ** 2)

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).lower(shape, shape, shape, bias, mask).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_compiled_memory_is_linear_in_length():
    small, large = _temp_bytes(4096), _temp_bytes(8192)
    assert large <= 2.2 * small, f"temp bytes {small} at 4096 -> {large} at 8192"
