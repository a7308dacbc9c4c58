"""Layer-wise learning-rate decay (`train.layer_lr_decay`): the optimizer's scaled updates against a
plain per-layer loop, on the stacked (scanned) and the unrolled parameter layouts."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from configs.base import get_base_config
from sener_jax import optim
from sener_jax.models.deberta import init_encoder_params
from sener_jax.models.layer_stack import layer_index, unstack_tree
from tests.tiny_configs import tiny_encoder

LAYERS = 3


def params_and_grads(seed: int):
    """Stacked params of a 3-layer tiny encoder + head leaves, and random gradients of the same tree."""
    encoder = init_encoder_params(tiny_encoder(num_hidden_layers=LAYERS), jax.random.PRNGKey(seed))
    # a head module whose name looks like a layer's: it must count neither as a layer nor get decayed
    params = {"encoder": encoder, "head": {"out": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros((2,))},
                                           "layer_9": {"kernel": jnp.ones((2, 2))}}}
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 100), len(leaves))
    grads = jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
    return params, grads


def updates(params, grads, decay: float, steps: int = 2):
    config = get_base_config().train
    config.update(dict(finetune="full", lr_encoder=1e-3, lr_head=1e-2, warmup_fraction=0.0, layer_lr_decay=decay))
    optimizer = optim.make_optimizer(config, params, total_steps=10)
    state = optimizer.init(params)
    # Two updates at the SAME params (Adam's moments and weight decay both take part; applying the
    # first update would give the two optimizers different params for the second).
    for step in range(steps):
        out, state = optimizer.update(jax.tree.map(lambda g: g * (1.0 + step), grads), state, params)
    return out


def reference_multiplier(path: tuple[str, ...], decay: float) -> float:
    """The plain rule on an UNROLLED path: head 1; layer n -> decay**(L-1-n); the rest of the encoder
    (embeddings, relative-position embeddings, their LayerNorms) -> decay**L."""
    if path[0] == "head":
        return 1.0
    indices = [layer_index(part) for part in path if layer_index(part) is not None]
    return decay ** (LAYERS - 1 - indices[0]) if indices else decay ** LAYERS


def unrolled_flat(tree) -> dict:
    return traverse_util.flatten_dict(jax.device_get({"encoder": unstack_tree(tree["encoder"]), "head": tree["head"]}))


@pytest.mark.parametrize("decay", [0.5, 0.8])
@pytest.mark.parametrize("layout", ["stacked", "unrolled"])
def test_updates_are_the_plain_per_layer_scaling_of_the_undecayed_ones(decay, layout):
    params, grads = params_and_grads(seed=int(decay * 10))
    if layout == "unrolled":
        params = {"encoder": unstack_tree(params["encoder"]), "head": params["head"]}
        grads = {"encoder": unstack_tree(grads["encoder"]), "head": grads["head"]}
    plain = unrolled_flat(updates(params, grads, 1.0)) if layout == "stacked" else traverse_util.flatten_dict(
        jax.device_get(updates(params, grads, 1.0)))
    decayed = updates(params, grads, decay)
    decayed = unrolled_flat(decayed) if layout == "stacked" else traverse_util.flatten_dict(jax.device_get(decayed))
    assert set(plain) == set(decayed)
    seen = set()
    for path, value in plain.items():
        factor = reference_multiplier(path, decay)
        seen.add(round(factor, 6))
        np.testing.assert_allclose(decayed[path], value * factor, rtol=1e-6, atol=1e-12, err_msg="/".join(path))
    # every depth occurs: head/top layer (1), the two lower layers, the embeddings
    assert seen == {round(decay ** k, 6) for k in range(LAYERS + 1)}


def test_decay_one_is_the_plain_optimizer_and_bad_values_name_the_field():
    params, grads = params_and_grads(seed=3)
    config = get_base_config().train
    config.finetune = "full"
    assert config.layer_lr_decay == 1.0  # the paper's optimizer by default
    # A train config written before the option (e.g. an old run's config.json) means "no decay".
    old = ml_collections.ConfigDict({k: v for k, v in config.items() if k != "layer_lr_decay"})
    for settings in (config, old):
        optimizer = optim.make_optimizer(settings, params, 10)
        out, _ = optimizer.update(grads, optimizer.init(params), params)
        reference = optim.make_optimizer(ml_collections.ConfigDict(dict(config, layer_lr_decay=0.999999)), params, 10)
        near, _ = reference.update(grads, reference.init(params), params)
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(near)):
            np.testing.assert_allclose(a, b, rtol=1e-5)
    for bad in (0.0, -0.5, 1.5):
        config.layer_lr_decay = bad
        with pytest.raises(ValueError, match=r"train\.layer_lr_decay must be in \(0, 1\]"):
            optim.make_optimizer(config, params, 10)


@pytest.mark.parametrize("decay", [1.0, 0.5])
def test_logged_rates_name_the_top_layer_and_the_embeddings(decay):
    """Under decay the logged "encoder" rate is the top layer's; the embeddings' rate is logged beside
    it (lr * decay**layers), so a log cannot read as if the whole encoder trained at the top rate."""
    config = get_base_config().train
    config.update(dict(finetune="full", lr_encoder=1e-3, lr_head=1e-2, warmup_fraction=0.0, layer_lr_decay=decay))
    rates = optim.current_learning_rates(config, total_steps=10, update_step=5, num_layers=LAYERS)
    np.testing.assert_allclose(rates["encoder"], 5e-4, rtol=1e-6)
    np.testing.assert_allclose(rates["head"], 5e-3, rtol=1e-6)
    if decay == 1.0:
        assert "encoder_embeddings" not in rates
    else:
        np.testing.assert_allclose(rates["encoder_embeddings"], 5e-4 * decay**LAYERS, rtol=1e-6)
