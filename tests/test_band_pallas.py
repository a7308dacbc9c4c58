"""The Pallas banded-attention kernel (interpret mode on CPU) against the dense reference."""
from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sener_jax.ops.band_pallas import banded_attention_pallas, shard_over_batch
from sener_jax.ops.band_reference import banded_attention_reference

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
from pallas_triton_compile import lower_for_cuda  # noqa: E402  (deviceless CUDA lowering, any jax)

FORWARD_ABS_TOL = 1e-5
GRAD_REL_TOL = 1e-4


def make_inputs(seed, batch, heads, n, head_dim, window, with_global, mask_kind="random"):
    keys = jax.random.split(jax.random.PRNGKey(seed), 8)
    q = jax.random.normal(keys[0], (batch, heads, n, head_dim))
    k = jax.random.normal(keys[1], (batch, heads, n, head_dim))
    v = jax.random.normal(keys[2], (batch, heads, n, head_dim))
    bias = jax.random.normal(keys[3], (batch, heads, n, 2 * window + 1))
    if mask_kind == "random":
        key_mask = jax.random.uniform(keys[4], (batch, n)) > 0.25
    elif mask_kind == "trailing":
        # Right padding of different lengths; the last batch row has no valid key at all.
        lengths = np.linspace(n, 0, batch).astype(int)
        key_mask = jnp.asarray(np.arange(n)[None, :] < lengths[:, None])
    else:
        raise ValueError(mask_kind)
    global_logit = jax.random.normal(keys[5], (batch, heads, n)) if with_global else None
    global_value = jax.random.normal(keys[6], (batch, heads, head_dim)) if with_global else None
    return q, k, v, bias, key_mask, global_logit, global_value


def linear_functional_grads(attention, inputs, window, seed, **kwargs):
    """Output and gradients of sum(out * C) for a fixed random C w.r.t. every float input."""
    q, k, v, bias, key_mask, global_logit, global_value = inputs
    with_global = global_logit is not None

    def loss(q, k, v, bias, global_logit, global_value):
        out = attention(
            q, k, v, bias, key_mask, window=window, global_logit=global_logit, global_value=global_value, **kwargs
        )
        weights = jax.random.normal(jax.random.PRNGKey(seed + 1000), out.shape)
        return jnp.sum(out * weights), out

    argnums = (0, 1, 2, 3, 4, 5) if with_global else (0, 1, 2, 3)
    grads, out = jax.jit(jax.grad(loss, argnums=argnums, has_aux=True))(q, k, v, bias, global_logit, global_value)
    return out, dict(zip(["q", "k", "v", "bias", "global_logit", "global_value"], grads))


def assert_matches_reference(inputs, window, seed, **kwargs):
    out, grads = linear_functional_grads(banded_attention_pallas, inputs, window, seed, **kwargs)
    ref_out, ref_grads = linear_functional_grads(banded_attention_reference, inputs, window, seed)
    forward_error = float(jnp.max(jnp.abs(out - ref_out)))
    assert forward_error <= FORWARD_ABS_TOL, f"forward abs error {forward_error}"
    for name, ref_grad in ref_grads.items():
        scale = float(jnp.max(jnp.abs(ref_grad)))
        error = float(jnp.max(jnp.abs(grads[name] - ref_grad)))
        assert np.isfinite(error) and error <= GRAD_REL_TOL * max(scale, 1e-6), f"d{name}: {error} vs scale {scale}"
    return out


# (batch, heads, n, head_dim, window, with_global, block_q, block_k)
CASES = [
    pytest.param(2, 2, 37, 8, 5, True, None, None, id="N37-w5-global-3blocks"),
    pytest.param(1, 1, 20, 8, 1, False, None, None, id="window1-nomask-global"),
    pytest.param(2, 1, 10, 8, 15, True, None, None, id="window-larger-than-N"),
    pytest.param(1, 2, 1, 8, 3, True, None, None, id="N1-global"),
    pytest.param(1, 1, 70, 16, 20, True, 16, 32, id="blockq16-blockk32"),
    pytest.param(2, 1, 45, 8, 7, False, 32, 16, id="blockq32-blockk16-nonmultiple"),
]


@pytest.mark.parametrize("batch,heads,n,head_dim,window,with_global,block_q,block_k", CASES)
def test_matches_reference_forward_and_gradients(batch, heads, n, head_dim, window, with_global, block_q, block_k):
    inputs = make_inputs(n + window, batch, heads, n, head_dim, window, with_global)
    assert_matches_reference(inputs, window, seed=n, block_q=block_q, block_k=block_k)


def test_long_sequence_with_right_padding_and_empty_row():
    """N ~ 300 over many blocks; one batch row is all padding (no global key: its output is 0)."""
    inputs = make_inputs(3, 3, 1, 300, 16, 24, False, mask_kind="trailing")
    out = assert_matches_reference(inputs, 24, seed=3, block_q=32, block_k=32)
    assert bool(jnp.all(out[-1] == 0.0)), "a row with no valid key must output exactly 0"


def test_rows_without_keys_are_zero_and_global_only_rows_get_global_value():
    q, k, v, bias, key_mask, global_logit, global_value = make_inputs(5, 2, 1, 18, 8, 2, True)
    key_mask = jnp.zeros_like(key_mask)
    out = banded_attention_pallas(q, k, v, bias, key_mask, window=2)
    assert bool(jnp.all(out == 0.0))
    out = banded_attention_pallas(
        q, k, v, bias, key_mask, window=2, global_logit=global_logit, global_value=global_value
    )
    np.testing.assert_allclose(out, jnp.broadcast_to(global_value[:, :, None, :], out.shape), atol=1e-6)


def test_bfloat16_inputs_with_float32_bias_as_the_encoder_passes_them():
    """bf16 q/k/v/global value (f32 bias and global logit): output and grads keep their dtypes and
    stay close to the float32 reference (bf16 rounding of inputs and probabilities only)."""
    q, k, v, bias, key_mask, global_logit, global_value = make_inputs(21, 1, 2, 40, 16, 6, True)
    low = [x.astype(jnp.bfloat16) for x in (q, k, v, global_value)]
    out, grads = linear_functional_grads(
        banded_attention_pallas, (low[0], low[1], low[2], bias, key_mask, global_logit, low[3]), 6, seed=21
    )
    ref_out, ref_grads = linear_functional_grads(
        banded_attention_reference,
        (*(x.astype(jnp.float32) for x in low[:3]), bias, key_mask, global_logit, low[3].astype(jnp.float32)), 6, seed=21,
    )
    assert out.dtype == jnp.bfloat16 and grads["q"].dtype == jnp.bfloat16 and grads["bias"].dtype == jnp.float32
    assert float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref_out))) <= 3e-2
    for name, ref_grad in ref_grads.items():
        error = float(jnp.max(jnp.abs(grads[name].astype(jnp.float32) - ref_grad)))
        assert error <= 3e-2 * float(jnp.max(jnp.abs(ref_grad))), f"d{name}: {error}"


def test_runs_under_shard_map_with_batch_sharded():
    devices = np.array(jax.devices()[:8])
    assert devices.size == 8, "tests/conftest.py should provide 8 fake CPU devices"
    mesh = jax.sharding.Mesh(devices, ("data",))
    q, k, v, bias, key_mask, global_logit, global_value = make_inputs(11, 8, 1, 12, 8, 3, True)
    sharded = shard_over_batch(banded_attention_pallas, mesh, "data")
    out = jax.jit(lambda *a: sharded(*a, window=3))(q, k, v, bias, key_mask, global_logit, global_value)
    ref = banded_attention_reference(
        q, k, v, bias, key_mask, window=3, global_logit=global_logit, global_value=global_value
    )
    assert float(jnp.max(jnp.abs(out - ref))) <= FORWARD_ABS_TOL


def test_lowers_for_the_gpu_triton_backend():
    """Forward and backward lower through the Pallas GPU (Triton) path without a GPU present.

    This exercises jax's Pallas -> Triton IR lowering rules (what Triton rejects at the jax level);
    tests/test_band_pallas_triton.py compiles that IR to PTX when triton is installed.
    """
    batch, heads, n, head_dim, window = 1, 2, 150, 64, 40
    q = jnp.zeros((batch, heads, n, head_dim), jnp.bfloat16)
    bias = jnp.zeros((batch, heads, n, 2 * window + 1), jnp.bfloat16)
    key_mask = jnp.ones((batch, n), bool)
    global_logit = jnp.zeros((batch, heads, n), jnp.bfloat16)
    global_value = jnp.zeros((batch, heads, head_dim), jnp.bfloat16)

    def loss(q, k, v, bias, global_logit, global_value):
        out = banded_attention_pallas(
            q, k, v, bias, key_mask, window=window, global_logit=global_logit, global_value=global_value,
            interpret=False, block_q=64, block_k=32,
        )
        return jnp.sum(out.astype(jnp.float32))

    grad = jax.grad(loss, argnums=(0, 1, 2, 3, 4, 5))
    text = lower_for_cuda(grad, q, q, q, bias, global_logit, global_value).as_text()
    # forward, dq/dbias and dk/dv kernels
    assert text.count("__gpu$xla.gpu.triton") == 3


def test_forward_backward_memory_is_linear_in_length():
    """Compiled temp memory of forward+backward doubles (not quadruples) with N; far below N x N."""
    batch, heads, head_dim, window = 1, 2, 16, 32

    def temp_bytes(n):
        def spec(*shape, dtype=jnp.float32):
            return jax.ShapeDtypeStruct(shape, dtype)

        def loss(q, k, v, bias, key_mask, global_logit, global_value):
            out = banded_attention_pallas(
                q, k, v, bias, key_mask, window=window, global_logit=global_logit, global_value=global_value
            )
            return jnp.sum(out)

        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 5, 6)))
        qkv = spec(batch, heads, n, head_dim)
        args = (qkv, qkv, qkv, spec(batch, heads, n, 2 * window + 1), spec(batch, n, dtype=jnp.bool_),
                spec(batch, heads, n), spec(batch, heads, head_dim))
        return grad.lower(*args).compile().memory_analysis().temp_size_in_bytes

    small, large = temp_bytes(4096), temp_bytes(8192)
    assert large <= 2.2 * small, f"temp bytes {small} -> {large} when doubling N"
    dense_probabilities = batch * heads * 8192 * 8192 * 4
    assert large < dense_probabilities / 4, f"{large} bytes is not far below one N x N matrix ({dense_probabilities})"


@pytest.mark.parametrize(
    "change,message",
    [
        ({"short_bias": True}, "bias must be"),
        ({"block_q": 24}, "block_q=24"),
        ({"global_only_logit": True}, "both global_logit and global_value"),
    ],
)
def test_bad_input_names_the_problem(change, message):
    q, k, v, bias, key_mask, global_logit, _ = make_inputs(0, 1, 1, 8, 8, 2, True)
    if change.get("short_bias"):
        bias = bias[..., :-1]
    kwargs = {"block_q": change.get("block_q")}
    if change.get("global_only_logit"):
        kwargs["global_logit"] = global_logit
    with pytest.raises(ValueError, match=message):
        banded_attention_pallas(q, k, v, bias, key_mask, window=2, **kwargs)
