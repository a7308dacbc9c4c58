"""Arrow / sliding attention: the banded implementations (xla, pallas) equal the dense
reference (forward <= 1e-5 abs, gradients <= 1e-4 relative), LogN scales exactly the [CLS] row,
and the arrow/xla encoder's compiled memory grows linearly with the length."""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sener_jax.models.deberta import DebertaEncoder, EncoderConfig
from sener_jax.models.disentangled_attention import AttentionSettings, RelativeGeometry, disentangled_attention
from tests.tiny_configs import ODD_WIDTH, tiny_encoder
from tests.deberta_helpers import encoder_grad_fn, random_encoder_params

try:
    from sener_jax.ops import band_pallas  # noqa: F401

    PALLAS_MISSING = None
except ImportError as error:  # the kernel lives in its own module, written separately
    PALLAS_MISSING = f"sener_jax.ops.band_pallas not importable: {error}"

NEEDS_PALLAS = pytest.mark.skipif(PALLAS_MISSING is not None, reason=str(PALLAS_MISSING))
IMPLS = ["xla", pytest.param("pallas", marks=NEEDS_PALLAS)]
# 8 buckets over 16 positions: distances beyond 4 are log-bucketed, so the [CLS] column/row
# (and wide windows) exercise the log buckets.
GEOMETRY = RelativeGeometry(span=8, position_buckets=8, max_relative_positions=16)
HEADS, DIM = 2, 4
SCALE = math.sqrt(DIM * 3)


def _attention_inputs(n: int, lengths: list[int], seed: int):
    rng = np.random.default_rng(seed)
    normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
    batch = len(lengths)
    q, k, v = (normal(batch, HEADS, n, DIM) for _ in range(3))
    pos_key, pos_query = normal(HEADS, 2 * GEOMETRY.span, DIM), normal(HEADS, 2 * GEOMETRY.span, DIM)
    mask = jnp.asarray(np.arange(n)[None, :] < np.asarray(lengths)[:, None])
    return (q, k, v, pos_key, pos_query, mask)


@functools.lru_cache(maxsize=None)
def _attention_fn(settings: AttentionSettings, with_grad: bool):
    def forward(q, k, v, pos_key, pos_query, mask):
        return disentangled_attention(q, k, v, pos_key, pos_query, mask, geometry=GEOMETRY, scale=SCALE, settings=settings)

    if not with_grad:
        return jax.jit(forward)

    def loss(q, k, v, pos_key, pos_query, mask, projection):
        return jnp.sum(forward(q, k, v, pos_key, pos_query, mask) * projection)

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))


# (n, lengths, window): padding in every batch; windows 1, small, larger than the sequence.
FORWARD_CASES = [(37, [37, 20, 1], 5), (9, [9, 4], 20), (30, [30, 12], 1), (1, [1, 1], 3)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("pattern", ["arrow", "sliding"])
@pytest.mark.parametrize("n, lengths, window", FORWARD_CASES)
def test_banded_forward_matches_dense(pattern, impl, n, lengths, window):
    inputs = _attention_inputs(n, lengths, seed=n + window)
    settings = AttentionSettings(pattern=pattern, impl=impl, window=window)
    out = _attention_fn(settings, False)(*inputs)
    ref = _attention_fn(dataclasses.replace(settings, impl="reference"), False)(*inputs)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "impl, logn, logn_length",
    [("xla", True, "tokens"), ("xla", False, "tokens"), ("xla", True, "padded"), pytest.param("pallas", True, "tokens", marks=NEEDS_PALLAS)],
)
def test_long_arrow_matches_dense(impl, logn, logn_length):
    inputs = _attention_inputs(1000, [1000, 613], seed=7)
    settings = AttentionSettings(pattern="arrow", impl=impl, window=64, logn=logn, logn_length=logn_length)
    out = _attention_fn(settings, False)(*inputs)
    ref = _attention_fn(dataclasses.replace(settings, impl="reference"), False)(*inputs)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("pattern", ["arrow", "sliding"])
def test_banded_gradients_match_dense(pattern, impl):
    inputs = _attention_inputs(37, [37, 20, 1], seed=11)
    projection = jnp.asarray(np.random.default_rng(12).normal(size=inputs[0].shape), jnp.float32)
    settings = AttentionSettings(pattern=pattern, impl=impl, window=6)
    grads = _attention_fn(settings, True)(*inputs, projection)
    ref_grads = _attention_fn(dataclasses.replace(settings, impl="reference"), True)(*inputs, projection)
    for name, grad, ref in zip(["q", "k", "v", "pos_key", "pos_query"], grads, ref_grads):
        error = float(jnp.max(jnp.abs(grad - ref)) / jnp.max(jnp.abs(ref)))
        assert error <= 1e-4, f"{pattern}/{impl}: d/d{name} relative error {error:.3g}"


def test_full_pattern_is_dense_whatever_the_impl():
    inputs = _attention_inputs(12, [12, 7], seed=3)
    ref = _attention_fn(AttentionSettings(pattern="full", impl="reference"), False)(*inputs)
    out = _attention_fn(AttentionSettings(pattern="full", impl="xla"), False)(*inputs)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("impl", ["reference", "xla"])
def test_logn_scales_exactly_the_cls_row(impl):
    q, k, v, _, _, mask = _attention_inputs(20, [20, 9], seed=5)

    @jax.jit
    def run(q, k, v, mask):  # without relative terms, so the row is easy to write by hand
        return [
            disentangled_attention(q, k, v, None, None, mask, geometry=GEOMETRY, scale=SCALE,
                                   settings=AttentionSettings(pattern="arrow", impl=impl, window=3, logn=logn))
            for logn in (True, False)
        ]

    with_logn, without = run(q, k, v, mask)
    np.testing.assert_allclose(with_logn[:, :, 1:], without[:, :, 1:], atol=1e-6)
    for b, length in enumerate([20, 9]):
        logits = jnp.einsum("hd,hjd->hj", q[b, :, 0], k[b, :, :length]) / SCALE * (math.log(length) / math.log(512))
        expected = jnp.einsum("hj,hjd->hd", jax.nn.softmax(logits, axis=-1), v[b, :, :length])
        np.testing.assert_allclose(with_logn[b, :, 0], expected, atol=1e-5)


def test_window_covering_the_sequence_equals_full_attention():
    inputs = _attention_inputs(16, [16, 10], seed=9)
    mask = np.asarray(inputs[-1])
    full = _attention_fn(AttentionSettings(pattern="full", impl="reference"), False)(*inputs)
    for pattern in ["arrow", "sliding"]:
        out = _attention_fn(AttentionSettings(pattern=pattern, impl="xla", window=16, logn=False), False)(*inputs)
        for b in range(2):
            np.testing.assert_allclose(out[b][:, mask[b]], full[b][:, mask[b]], atol=1e-5)


def test_padding_rows_are_zero_and_batchmates_do_not_matter():
    q, k, v, pos_key, pos_query, mask = _attention_inputs(30, [30, 17], seed=13)
    settings = AttentionSettings(pattern="arrow", impl="xla", window=4)
    out = _attention_fn(settings, False)(q, k, v, pos_key, pos_query, mask)
    assert np.all(np.asarray(out[1, :, 17:]) == 0.0)
    # The same 17-token sequence alone, padded to 20 instead of 30: same outputs.
    alone = _attention_fn(settings, False)(
        q[1:, :, :20], k[1:, :, :20], v[1:, :, :20], pos_key, pos_query, mask[1:, :20]
    )
    np.testing.assert_allclose(alone[0, :, :17], out[1, :, :17], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Through the whole encoder: forward and gradients w.r.t. every parameter (embedding table included)
# ---------------------------------------------------------------------------------------------

SMALL = tiny_encoder(**ODD_WIDTH)


@pytest.mark.parametrize("impl", IMPLS)
def test_encoder_arrow_matches_dense_with_gradients(impl):
    params = random_encoder_params(SMALL, seed=0)
    rng = np.random.default_rng(1)
    lengths = [40, 23]
    ids = jnp.asarray(rng.integers(1, SMALL.vocab_size, size=(2, 40)), jnp.int32)
    mask = jnp.asarray(np.arange(40)[None, :] < np.asarray(lengths)[:, None], jnp.int32)
    projection = jnp.asarray(rng.normal(size=(2, 40, SMALL.hidden_size)), jnp.float32)
    (_, out), grads = encoder_grad_fn(dataclasses.replace(SMALL, attention_impl=impl))(params, ids, mask, projection)
    (_, ref), ref_grads = encoder_grad_fn(dataclasses.replace(SMALL, attention_impl="reference"))(params, ids, mask, projection)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
    flat, flat_ref = jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads)
    for (path, grad), ref_grad in zip(flat, flat_ref):
        error = float(jnp.max(jnp.abs(grad - ref_grad)) / max(float(jnp.max(jnp.abs(ref_grad))), 1e-12))
        assert error <= 1e-4, f"{impl}: gradient of {jax.tree_util.keystr(path)}: relative error {error:.3g}"


def _encoder_temp_bytes(n: int) -> int:
    config = EncoderConfig(
        vocab_size=128, hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128,
        attention="arrow", attention_impl="xla", window=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    params = jax.eval_shape(lambda: DebertaEncoder(config).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32))["params"])
    ids = jax.ShapeDtypeStruct((1, n), jnp.int32)

    def loss(params, ids, mask):
        return jnp.sum(DebertaEncoder(config).apply({"params": params}, ids, mask) ** 2)

    compiled = jax.jit(jax.grad(loss)).lower(params, ids, ids).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_arrow_xla_encoder_memory_is_linear():
    at_8k, at_16k = _encoder_temp_bytes(8192), _encoder_temp_bytes(16384)
    print(f"\n[memory] arrow/xla encoder fwd+bwd temp bytes: 8192 -> {at_8k:,}, 16384 -> {at_16k:,} (x{at_16k / at_8k:.3f})")
    assert at_16k <= 2.2 * at_8k


def test_logn_factor_padded_follows_longest_real_sequence_not_array_length():
    """The authors' n: the batch's longest real length rounded up to 256, whatever our bucket padding."""
    from sener_jax.models.disentangled_attention import logn_factor

    def mask(lengths, width):
        return jnp.arange(width)[None, :] < jnp.asarray(lengths)[:, None]

    for width in (700, 1024, 2048):  # the same two sequences in buckets of several widths
        factor = logn_factor(mask([700, 300], width), "padded")
        np.testing.assert_allclose(np.asarray(factor), [math.log(768) / math.log(512)] * 2, rtol=1e-6)
    tokens = logn_factor(mask([700, 300], 1024), "tokens")
    np.testing.assert_allclose(np.asarray(tokens), [math.log(n) / math.log(512) for n in (700, 300)], rtol=1e-6)
