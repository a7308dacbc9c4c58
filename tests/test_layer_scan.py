"""Scanned encoder layers (nn.scan, stacked params) with each remat policy == the unrolled reference;
the stacked <-> per-layer params views; old (unrolled) exports still load."""
import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sener_jax import convert
from sener_jax.models.deberta import SENER_FIELDS, DebertaEncoder, EncoderConfig, init_encoder_params
from sener_jax.models.encoder_config import REMAT_POLICIES, SenerSettings
from flax import traverse_util

from sener_jax.models.layer_stack import replace_top_layers, stack_tree, unstack_tree
from sener_jax.models.lora import merge_lora
from tests.tiny_configs import tiny_encoder

BASE = tiny_encoder(num_hidden_layers=3, window=3, lora_rank=2)
IDS = jnp.asarray(np.random.default_rng(0).integers(1, 50, (2, 14)), jnp.int32)
MASK = jnp.asarray(np.arange(14)[None] < np.array([[14], [9]]), jnp.int32)


@functools.partial(jax.jit, static_argnums=1)
def _random(params, seed=1):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, x.shape) + (x if x.ndim == 2 else 0)
                                     for k, x in zip(keys, leaves)])


def _encode(config, params):
    return DebertaEncoder(config).apply({"params": params}, IDS, MASK)


def _forward(config, params):
    # Jitted: an eager Flax apply dispatches (and compiles) op by op, most of these tests' time.
    return jax.jit(functools.partial(_encode, config))(params)


def _value_and_grad(config, params):
    loss = lambda p: jnp.sum(jnp.sin(_encode(config, p)))  # noqa: E731
    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("remat", sorted(REMAT_POLICIES))
def test_scanned_remat_encoder_matches_unrolled_reference(remat):
    config = dataclasses.replace(BASE, remat=remat)
    params = _random(init_encoder_params(config, jax.random.PRNGKey(0)))
    layer = params["encoder"]["layer"]["attention"]["self"]["query_proj"]["kernel"]
    assert layer.shape == (3, 16, 16)
    reference = dataclasses.replace(BASE, scan_layers=False, remat="none")
    value, grads = _value_and_grad(config, params)
    ref_value, ref_grads = _value_and_grad(reference, unstack_tree(params))
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    ref_grads = stack_tree(ref_grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), grads, ref_grads)
    out = _forward(config, params)
    ref_out = _forward(reference, unstack_tree(params))
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)


def test_stacked_lora_merge_matches_per_layer_merge():
    params = _random(init_encoder_params(BASE, jax.random.PRNGKey(0)))
    merged, merged_config = merge_lora(params, BASE)
    per_layer, _ = merge_lora(unstack_tree(params), dataclasses.replace(BASE, scan_layers=False))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), unstack_tree(merged), per_layer)
    np.testing.assert_allclose(_forward(merged_config, merged), _forward(BASE, params), atol=1e-5)


def test_old_unrolled_export_loads_into_the_stacked_layout(tmp_path):
    config = dataclasses.replace(BASE, lora_rank=0)
    params = _random(init_encoder_params(config, jax.random.PRNGKey(0)))
    convert.save_encoder(tmp_path / "old", config, unstack_tree(params))  # as written before the scan
    loaded_config, loaded = convert.load_encoder(tmp_path / "old")
    assert loaded_config == config
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, params))


def test_sener_fields_come_from_the_settings_dataclass_and_old_remat_bools_warn():
    assert set(SENER_FIELDS) == {f.name for f in dataclasses.fields(SenerSettings)}
    assert {"attention", "lora_rank", "dtype", "remat", "scan_layers"} <= set(SENER_FIELDS)
    assert "hidden_size" not in SENER_FIELDS
    for old, new in ((True, "layer"), (False, "none")):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert EncoderConfig.from_dict({**BASE.to_dict(), "remat": old}).remat == new
        assert any("deprecated" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match="EncoderConfig.remat='everything'"):
        dataclasses.replace(BASE, remat="everything")


@pytest.mark.parametrize("count", [0, 1, 2, 3])
def test_replace_top_layers_takes_exactly_the_top_layers_in_both_layouts(count):
    params = _random(init_encoder_params(BASE, jax.random.PRNGKey(0)), seed=1)
    fresh = _random(init_encoder_params(BASE, jax.random.PRNGKey(0)), seed=2)
    stacked = replace_top_layers(params, fresh, count)
    unrolled = replace_top_layers(unstack_tree(params), unstack_tree(fresh), count)
    flat_unrolled = traverse_util.flatten_dict(unrolled)
    for path, value in traverse_util.flatten_dict(unstack_tree(stacked)).items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(flat_unrolled[path]))
    source = {"params": traverse_util.flatten_dict(unstack_tree(params)),
              "fresh": traverse_util.flatten_dict(unstack_tree(fresh))}
    seen = set()
    for path, value in flat_unrolled.items():
        layer = next((int(p[len("layer_"):]) for p in path if p.startswith("layer_")), None)
        origin = "fresh" if layer is not None and layer >= 3 - count else "params"
        seen.add((origin, layer is None))
        np.testing.assert_array_equal(np.asarray(value), np.asarray(source[origin][path]))
    assert ("params", True) in seen  # the embeddings stay
    assert (("fresh", False) in seen) == (count > 0)


def test_replace_top_layers_refuses_more_layers_than_the_encoder_has():
    params = init_encoder_params(BASE, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="top 4 layers of an encoder with 3 layers"):
        replace_top_layers(params, params, 4)
