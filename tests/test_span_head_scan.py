"""The BiSPA blocks as one rematerialised scan (remat_blocks=True) == the unrolled blocks, and the
scan is what makes the rematerialisation save memory under XLA:CPU."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from sener_jax.band_layout import band_cell_mask
from sener_jax.models.span_head import SpanHead, SpanHeadConfig

CFG = SpanHeadConfig(num_types=3, max_span_words=5, biaffine_dim=8, channels=8, num_blocks=2, row_chunk=4)


def _loss(cfg):
    def loss(params, x, mask):
        out = SpanHead(cfg).apply({"params": params}, x, mask)
        return jnp.sum(jnp.sin(jnp.where(band_cell_mask(mask, cfg.band_half_width)[..., None], out, 0.0)))

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def test_scanned_blocks_match_unrolled_blocks_forward_and_gradients():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 11, 12)), jnp.float32)
    mask = jnp.asarray(np.arange(11)[None] < np.array([[11], [7]]))
    params = SpanHead(CFG).init(jax.random.PRNGKey(0), x, mask)["params"]
    assert {"cross_layers_0", "cross_layers_1"} <= set(params)  # the authors' per-block names stay
    value, grads = _loss(CFG)(params, x, mask)
    ref_value, ref_grads = _loss(dataclasses.replace(CFG, remat_blocks=False))(params, x, mask)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), grads, ref_grads)


def test_scanned_blocks_need_far_less_training_memory():
    cfg = SpanHeadConfig(num_types=4, max_span_words=33, channels=32, num_blocks=2, row_chunk=32)
    x = jax.ShapeDtypeStruct((1, 512, 64), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, 512), jnp.bool_)
    params = jax.eval_shape(lambda: SpanHead(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 64)), jnp.ones((1, 2), bool)))
    temps = [_loss(c).lower(params["params"], x, mask).compile().memory_analysis().temp_size_in_bytes
             for c in (cfg, dataclasses.replace(cfg, remat_blocks=False))]
    assert temps[0] < 0.75 * temps[1], temps
