"""Span head: the band implementation equals the dense (i, j) reference; layout, masks, RoPE, config."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sener_jax.band_layout import band_cell_mask, transpose_band
from sener_jax.models.bispa_ops import apply_rope, rope_table
from sener_jax.models.span_head import INVALID_LOGIT, SpanHead, SpanHeadConfig

D_IN = 16


def _inputs(batch, length, seed, pad_last=3):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(batch, length, D_IN)), jnp.float32)
    mask = np.ones((batch, length), bool)
    if batch > 1:  # the last row is padded (at least one real word stays)
        mask[-1, max(1, length - pad_last) :] = False
    return x, jnp.asarray(mask)


def _init(cfg, x=None, mask=None, seed=0):
    """Parameters depend only on (d, c, biaffine_dim, R, num_blocks, use_bispa): initialise once per
    such shape on a tiny input (jitted: eager init of the chunked loops is slow) and reuse."""
    key = (cfg.channels, cfg.biaffine_dim, cfg.num_types, cfg.num_blocks if cfg.use_bispa else 0, seed)
    return _init_cached(key)


@functools.lru_cache(maxsize=None)
def _init_cached(key):
    channels, biaffine_dim, num_types, num_blocks, seed = key
    cfg = SpanHeadConfig(
        num_types=num_types, channels=channels, biaffine_dim=biaffine_dim, max_span_words=2,
        num_blocks=num_blocks, use_bispa=num_blocks > 0,
    )
    x, mask = jnp.zeros((1, 2, D_IN)), jnp.ones((1, 2), bool)
    params = jax.jit(lambda k: SpanHead(cfg).init(k, x, mask)["params"])(jax.random.PRNGKey(seed))
    # Perturb the zero-initialised biases and LayerNorm parameters so that a wrong index into them shows.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    leaves = [leaf + 0.1 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, leaves)


@functools.lru_cache(maxsize=None)
def _forward(cfg):
    return jax.jit(lambda p, x, m: SpanHead(cfg).apply({"params": p}, x, m))


@functools.lru_cache(maxsize=None)
def _grads(cfg):
    def loss(p, x, m, weights):
        out = SpanHead(cfg).apply({"params": p}, x, m)
        valid = band_cell_mask(m, cfg.band_half_width)[..., None]
        return jnp.sum(jnp.where(valid, out * weights, 0.0))

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


# (batch, L, window, num_blocks, alignment, use_bispa, row_chunk)
FORWARD_CASES = [
    (1, 1, 1, 1, "original", True, 4),
    (2, 9, 3, 2, "plus", True, 3),  # the published two blocks
    (2, 50, 128, 1, "original", False, 16),  # window wider than the segment; w/o BiSPA
    (1, 600, 128, 1, "original", True, 128),  # few params at large L
    (1, 600, 3, 1, "plus", True, 100),
]
def _forward_config(window, num_blocks, alignment, use_bispa, row_chunk):
    return SpanHeadConfig(
        num_types=3,
        max_span_words=window + 1,
        channels=8,
        num_blocks=num_blocks,
        biaffine_dim=6,
        bispa_alignment=alignment,
        use_bispa=use_bispa,
        row_chunk=row_chunk,
    )


@pytest.mark.parametrize("batch,length,window,num_blocks,alignment,use_bispa,row_chunk", FORWARD_CASES)
def test_band_forward_equals_reference(batch, length, window, num_blocks, alignment, use_bispa, row_chunk):
    cfg = _forward_config(window, num_blocks, alignment, use_bispa, row_chunk)
    x, mask = _inputs(batch, length, seed=length + window)
    params = _init(cfg, x, mask, seed=length)
    band = _forward(cfg)(params, x, mask)
    dense = _forward(dataclasses.replace(cfg, impl="reference"))(params, x, mask)
    k = 2 * window + 1
    assert band.shape == dense.shape == (batch, length, k, 3)
    valid = np.asarray(band_cell_mask(mask, window))
    np.testing.assert_array_equal(np.asarray(band)[~valid], INVALID_LOGIT)
    np.testing.assert_array_equal(np.asarray(dense)[~valid], INVALID_LOGIT)
    # The comparison must be about real numbers, not two walls of zeros.
    assert np.abs(np.asarray(band)[valid]).max() > 0.1
    # 1e-5 relative to the logit scale (logits here reach ~10): the two impls sum in different orders
    # (softmax over K vs L keys) and the LayerNorms over c = 8 channels amplify last-bit differences.
    scale = max(1.0, float(np.abs(np.asarray(dense)[valid]).max()))
    np.testing.assert_allclose(np.asarray(band)[valid], np.asarray(dense)[valid], rtol=0, atol=1e-5 * scale)


def _relative_error(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-30))


@pytest.mark.parametrize(
    "length,window,alignment,use_bispa",
    [(23, 3, "original", True), (12, 128, "plus", True)],
)
def test_band_gradients_equal_reference(length, window, alignment, use_bispa):
    cfg = SpanHeadConfig(
        num_types=2, max_span_words=window + 1, channels=8, biaffine_dim=6, num_blocks=1, bispa_alignment=alignment,
        use_bispa=use_bispa, row_chunk=5,
    )
    x, mask = _inputs(2, length, seed=7)
    params = _init(cfg, x, mask, seed=3)
    weights = jnp.asarray(np.random.default_rng(1).normal(size=(2, length, 2 * window + 1, 2)), jnp.float32)
    v_band, g_band = _grads(cfg)(params, x, mask, weights)
    v_dense, g_dense = _grads(dataclasses.replace(cfg, impl="reference"))(params, x, mask, weights)
    np.testing.assert_allclose(float(v_band), float(v_dense), rtol=1e-5)
    leaves_band, tree_band = jax.tree.flatten_with_path(g_band)
    leaves_dense, tree_dense = jax.tree.flatten(g_dense)
    assert len(leaves_band) == len(leaves_dense)
    for (path, a), b in zip(leaves_band, leaves_dense):
        assert float(jnp.max(jnp.abs(b))) > 0 or "pos_embed" in jax.tree_util.keystr(path), path
        assert _relative_error(a, b) <= 1e-4, (jax.tree_util.keystr(path), _relative_error(a, b))
    # padded words get no gradient (their cells are invalid everywhere)
    assert float(jnp.abs(g_band[1][1][~mask[1]]).max()) == 0.0


def test_parameter_tree_is_the_same_for_every_impl_and_named_like_the_authors():
    x, mask = _inputs(1, 5, seed=0)
    cfg = SpanHeadConfig(num_types=4, max_span_words=3, channels=8, biaffine_dim=10)
    def shapes_of(config):
        tree = jax.eval_shape(lambda: SpanHead(config).init(jax.random.PRNGKey(0), x, mask)["params"])
        return jax.tree.map(lambda leaf: leaf.shape, tree)

    shapes = {impl: shapes_of(dataclasses.replace(cfg, impl=impl)) for impl in ("band", "reference")}
    assert shapes["band"] == shapes["reference"]
    s = shapes["band"]
    c = 8
    assert s["head_mlp"] == {"kernel": (D_IN, 10), "bias": (10,)}
    assert s["tail_mlp"] == {"kernel": (D_IN, 10), "bias": (10,)}
    assert s["U"] == (c, 11, 11) and s["W"] == (c, 22)
    assert s["down_fc"] == {"kernel": (c, 4), "bias": (4,)}
    block = {
        "pos_embed": {"embedding": (2, c)},
        "h_qkv": {"kernel": (c, 3 * c), "bias": (3 * c,)},
        "v_qkv": {"kernel": (c, 3 * c), "bias": (3 * c,)},
        "dense": {"kernel": (2 * c, c), "bias": (c,)},
        "LayerNorm": {"scale": (c,), "bias": (c,)},
        "conv1": {"kernel": (3, 3, c, c)},
        "conv2": {"kernel": (3, 3, c, c)},
        "LayerNorm2": {"scale": (c,), "bias": (c,)},
    }
    assert s["cross_layers_0"] == block and s["cross_layers_1"] == block
    assert set(s) == {"head_mlp", "tail_mlp", "U", "W", "down_fc", "cross_layers_0", "cross_layers_1"}
    no_bispa = shapes_of(dataclasses.replace(cfg, use_bispa=False))
    assert set(no_bispa) == {"head_mlp", "tail_mlp", "U", "W", "down_fc"}


def test_band_layout_and_biaffine_without_bispa_against_a_loop():
    """X[i, k] = S[i, i+k-w'] with S from SPEC §3, checked cell by cell in numpy."""
    cfg = _forward_config(128, 1, "original", False, 16)  # compiled already by a forward case
    x, mask = _inputs(2, 11, seed=5, pad_last=4)
    params = _init(cfg, x, mask)
    out = np.asarray(_forward(cfg)(params, x, mask))
    p = jax.tree.map(np.asarray, params)
    xs = np.asarray(x, np.float64)
    gelu = lambda v: 0.5 * v * (1 + np.vectorize(__import__("math").erf)(v / np.sqrt(2)))  # noqa: E731
    h = gelu(xs @ p["head_mlp"]["kernel"] + p["head_mlp"]["bias"])
    t = gelu(xs @ p["tail_mlp"]["kernel"] + p["tail_mlp"]["bias"])
    h = np.concatenate([h, np.ones(h.shape[:-1] + (1,))], -1)
    t = np.concatenate([t, np.ones(t.shape[:-1] + (1,))], -1)
    w = cfg.band_half_width
    for b in range(2):
        n = int(np.asarray(mask[b]).sum())
        for i in range(11):
            for k in range(2 * w + 1):
                j = i + k - w
                if i >= n or not 0 <= j < n:
                    assert (out[b, i, k] == INVALID_LOGIT).all()
                    continue
                s = np.array(
                    [h[b, i] @ p["U"][o] @ t[b, j] + p["W"][o] @ np.concatenate([h[b, i], t[b, j]]) for o in range(8)]
                )
                expected = s @ p["down_fc"]["kernel"] + p["down_fc"]["bias"]
                np.testing.assert_allclose(out[b, i, k], expected, rtol=1e-5, atol=1e-5)


def test_band_cell_mask_and_transpose_band_against_loops():
    mask = jnp.asarray([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], bool)
    w = 2
    valid = np.asarray(band_cell_mask(mask, w))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 5, 3)), jnp.float32)
    y = np.asarray(transpose_band(x, w))
    for b in range(2):
        for i in range(5):
            for k in range(5):
                j = i + k - w
                assert valid[b, i, k] == (bool(mask[b, i]) and 0 <= j < 5 and bool(mask[b, j]))
                r, kk = i + k - w, 2 * w - k  # Y[i, k] = X[i+k-w', 2w'-k]
                expected = np.asarray(x)[b, r, kk] if 0 <= r < 5 else 0.0
                np.testing.assert_array_equal(y[b, i, k], expected)
    np.testing.assert_array_equal(np.asarray(transpose_band(transpose_band(x, w), w))[valid], np.asarray(x)[valid])


def test_rope_matches_transformers_roformer():
    torch = pytest.importorskip("torch")
    from transformers.models.roformer import modeling_roformer as rf

    c, n = 8, 11
    emb = rf.RoFormerSinusoidalPositionalEmbedding(512, c)
    table = emb.create_weight()[:n]  # (n, c): sin in the first half, cos in the second
    q = torch.randn(1, 1, n, c)
    k = torch.randn(1, 1, n, c)
    q_ref, k_ref = rf.RoFormerSelfAttention.apply_rotary_position_embeddings(table[None, None], q, k)
    sin, cos = rope_table(np.arange(n), c)
    np.testing.assert_allclose(sin, table[:, : c // 2].numpy(), atol=1e-7)
    np.testing.assert_allclose(cos, table[:, c // 2 :].numpy(), atol=1e-7)
    ours_q = apply_rope(jnp.asarray(q.numpy()), jnp.asarray(sin), jnp.asarray(cos))
    ours_k = apply_rope(jnp.asarray(k.numpy()), jnp.asarray(sin), jnp.asarray(cos))
    np.testing.assert_allclose(np.asarray(ours_q), q_ref.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(ours_k), k_ref.numpy(), atol=1e-6)


def test_dropout_is_active_only_when_not_deterministic():
    window = 3
    cfg = _forward_config(window, 2, "plus", True, 3)  # deterministic forward compiled by a forward case
    x, mask = _inputs(2, 9, seed=2)
    params = _init(cfg, x, mask)
    train = jax.jit(
        lambda p, key: SpanHead(cfg).apply({"params": p}, x, mask, deterministic=False, rngs={"dropout": key})
    )
    a = train(params, jax.random.PRNGKey(1))
    b = train(params, jax.random.PRNGKey(2))
    c = _forward(cfg)(params, x, mask)
    valid = np.asarray(band_cell_mask(mask, window))
    assert np.abs(np.asarray(a - b)[valid]).max() > 1e-3
    assert np.abs(np.asarray(a - c)[valid]).max() > 1e-3
    np.testing.assert_array_equal(np.asarray(a)[~valid], INVALID_LOGIT)


def test_config_round_trip_and_clear_errors():
    cfg = SpanHeadConfig(num_types=5, max_span_words=8, impl="reference", bispa_alignment="plus")
    assert SpanHeadConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.band_width == 15
    with pytest.raises(ValueError, match="impl"):
        SpanHeadConfig(num_types=2, impl="sparse")
    with pytest.raises(ValueError, match="bispa_alignment"):
        SpanHeadConfig(num_types=2, bispa_alignment="cross")
    with pytest.raises(ValueError, match="channels"):
        SpanHeadConfig(num_types=2, channels=7)
    with pytest.raises(ValueError, match="num_types"):
        SpanHeadConfig(num_types=0)
    with pytest.raises(ValueError, match="unknown field"):
        SpanHeadConfig.from_dict({"num_types": 2, "heads": 4})
    with pytest.raises(ValueError, match="word_mask"):
        SpanHead(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 3)), jnp.ones((1, 5), bool))


def _train_step_temp_bytes(cfg, length, d=D_IN):
    """Temp bytes of a compiled forward+backward of the head (compile only, nothing runs)."""
    x = jax.ShapeDtypeStruct((1, length, d), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, length), jnp.bool_)
    params = jax.eval_shape(
        lambda: SpanHead(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 2, d)), jnp.ones((1, 2), bool))["params"]
    )

    def loss(p, x, m):
        out = SpanHead(cfg).apply({"params": p}, x, m)
        return jnp.sum(jnp.where(band_cell_mask(m, cfg.band_half_width)[..., None], out, 0.0))

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x, mask).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_band_head_training_memory_is_linear_in_words_and_far_below_dense():
    cfg = SpanHeadConfig(num_types=4)  # published head: w' = 128, c = 32, two blocks
    band_2k = _train_step_temp_bytes(cfg, 2048)
    band_4k = _train_step_temp_bytes(cfg, 4096)
    dense_2k = _train_step_temp_bytes(dataclasses.replace(cfg, impl="reference"), 2048)
    # O(L*K*c): one (L, K, c) fp32 tensor at 2,048 words is 64 MiB; the (L, K, K) maps of one
    # direction alone would be 516 MiB, so bounded chunks are what keeps this below ~50 such tensors.
    one_band_tensor = 2048 * (2 * cfg.band_half_width + 1) * cfg.channels * 4
    assert band_4k <= 2.2 * band_2k, (band_2k, band_4k)
    assert band_2k <= 50 * one_band_tensor, band_2k / one_band_tensor
    assert band_2k <= 0.05 * dense_2k, (band_2k, dense_2k)
