"""The training step: 8-device mesh == 1 device; LoRA-only training; optimizer groups."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from configs.base import get_base_config
from sener_jax import optim, train_step
from sener_jax.data.labels import band_labels
from sener_jax.models.sener import SenerConfig
from tests.tiny_configs import tiny_encoder, tiny_head

ENCODER = tiny_encoder(vocab_size=40, lora_rank=2)
# No BiSPA blocks: these tests are about sharding and optimisation, and compile twice as fast without
# them (the full head runs in the end-to-end tests of the tiny configs).
HEAD = tiny_head(num_blocks=0)
MODEL = SenerConfig(ENCODER, HEAD)


def train_config(**overrides) -> ml_collections.ConfigDict:
    config = get_base_config()
    config.train.update(dict(lr_head=1e-2, lr_lora=1e-2, warmup_fraction=0.0, **overrides))
    return config


def random_batch(seed: int, rows: int = 8, real_rows: int = 6, n_tokens: int = 12, n_words: int = 6) -> dict:
    """A batch with `rows - real_rows` padding rows at the end (row_weight 0, empty masks)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, n_words + 1, rows)
    word_index = np.full((rows, n_tokens), -1, np.int32)
    attention = np.zeros((rows, n_tokens), np.int32)
    word_mask = np.zeros((rows, n_words), bool)
    for b in range(real_rows):
        word_index[b, 1 : 1 + lengths[b]] = np.arange(lengths[b])
        attention[b, : lengths[b] + 2] = 1
        word_mask[b, : lengths[b]] = True
    labels = (rng.random((rows, n_words, 2 * HEAD.band_half_width + 1, HEAD.num_types)) < 0.1).astype(np.uint8)
    labels *= word_mask[:, :, None, None]
    return {
        "input_ids": (rng.integers(5, ENCODER.vocab_size, (rows, n_tokens)) * attention).astype(np.int32),
        "attention_mask": attention,
        "word_index": word_index,
        "word_mask": word_mask,
        "labels": labels,
        "row_weight": (np.arange(rows) < real_rows).astype(np.float32),
    }


@pytest.fixture(scope="module")
def initial():
    """(state, frozen, optimizer) built once for the module (init compiles the whole model)."""
    return train_step.create_train_state(train_config(), MODEL, total_updates=10, rng=jax.random.PRNGKey(0))


def run_steps(mesh, initial, n_steps=2):
    state, frozen, optimizer = initial
    state = jax.tree.map(jnp.array, state)  # a copy: the step donates its state
    frozen_before = jax.tree.map(np.array, frozen)
    state, frozen = train_step.replicate(state, mesh), train_step.replicate(frozen, mesh)
    step = train_step.make_train_step(MODEL, optimizer, mesh)
    losses = []
    for i in range(n_steps):
        state, metrics = step(state, frozen, train_step.shard_batch(random_batch(i), mesh))
        losses.append(float(metrics["loss"]))
    return state, frozen, frozen_before, losses


@pytest.fixture(scope="module")
def eight_and_one(initial):
    assert jax.device_count() == 8, "tests/conftest.py provides 8 fake CPU devices"
    return run_steps(train_step.make_mesh(), initial), run_steps(train_step.make_mesh(jax.devices()[:1]), initial)


def test_eight_devices_equal_one_device(eight_and_one):
    (state8, _, _, losses8), (state1, _, _, losses1) = eight_and_one
    np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
    flat8 = traverse_util.flatten_dict(jax.device_get(state8["trainable"]))
    flat1 = traverse_util.flatten_dict(jax.device_get(state1["trainable"]))
    assert flat8.keys() == flat1.keys()
    for path in flat8:
        np.testing.assert_allclose(flat8[path], flat1[path], atol=1e-5, rtol=1e-5, err_msg="/".join(path))


def test_loss_is_the_global_mean_over_real_rows(initial):
    """Loss of a batch == mean over its real rows of the per-row loss (padding rows add nothing)."""
    state, frozen, _ = initial
    params = optim.merge_params(state["trainable"], frozen)
    loss_sum = jax.jit(lambda p, b: train_step.loss_sum(MODEL, p, b, deterministic=True))
    batch = random_batch(3)
    total = loss_sum(params, batch) / batch["row_weight"].sum()
    # Each real row alone, in a batch of the same shape whose other rows are padding.
    per_row = []
    for b in range(6):
        alone = {k: v.copy() for k, v in batch.items()}
        alone["row_weight"] = (np.arange(8) == b).astype(np.float32)
        per_row.append(loss_sum(params, alone))
    np.testing.assert_allclose(total, np.mean(per_row), rtol=1e-5)


def test_sparse_label_spans_give_the_dense_labels_loss(initial):
    """The step's loss from `label_spans` (targets built on the device) == from host dense `labels`."""
    state, frozen, _ = initial
    params = optim.merge_params(state["trainable"], frozen)
    loss_sum = jax.jit(lambda p, b: train_step.loss_sum(MODEL, p, b, deterministic=True))
    dense = random_batch(4)
    w = HEAD.band_half_width
    dense["labels"][:] = 0
    spans = np.full((8, 8, 3), -1, np.int32)
    for b in range(6):  # two spans per real row, within its words, both band cells set as band_labels does
        n = int(dense["word_mask"][b].sum())
        for m, (s, e, t) in enumerate([(0, min(1, n - 1), 0), (n - 1, n - 1, 1)]):
            spans[b, m] = (s, e, t)
            band_labels([(s, e + 1, t)], n, w, {}, num_types=HEAD.num_types, out=dense["labels"][b, :n])
    sparse = {k: v for k, v in dense.items() if k != "labels"}
    sparse["label_spans"] = spans
    assert dense["labels"].sum() > 0
    np.testing.assert_allclose(loss_sum(params, sparse), loss_sum(params, dense), rtol=1e-6)


def test_lora_training_leaves_frozen_weights_and_has_no_state_for_them(eight_and_one):
    (state, frozen, frozen_before, _), _ = eight_and_one
    trainable = traverse_util.flatten_dict(jax.device_get(state["trainable"]))
    groups = {optim.param_group(p, "lora") for p in trainable}
    assert groups == {"head", "lora"}
    assert all(p[-1] in ("lora_a", "lora_b", "bias") for p in trainable if p[0] == "encoder")
    # Frozen leaves: bit-identical after the steps, and absent from the optimizer state.
    for path, value in traverse_util.flatten_dict(jax.device_get(frozen)).items():
        np.testing.assert_array_equal(value, traverse_util.flatten_dict(frozen_before)[path])
    n_trainable = sum(x.size for x in jax.tree.leaves(state["trainable"]))
    n_opt = sum(x.size for x in jax.tree.leaves(state["opt_state"]))
    assert n_opt <= 2 * n_trainable + 64  # Adam's mu and nu for trainable leaves (+ counters) only
    lora_b = trainable[("encoder", "encoder", "layer", "attention", "self", "query_proj", "lora_b")]
    assert np.abs(lora_b).max() > 0  # B started at zero: it trained


def test_frozen_label_zeroes_updates_when_given_the_full_tree(initial):
    """A caller that passes all params to the optimizer still cannot move frozen leaves."""
    state, frozen, _ = initial
    params = optim.merge_params(state["trainable"], frozen)
    optimizer = optim.make_optimizer(train_config().train, params, total_steps=10)

    @jax.jit
    def one_update(params):
        grads = jax.tree.map(jnp.ones_like, params)
        updates, _ = optimizer.update(grads, optimizer.init(params), params)
        return optim.optax.apply_updates(params, updates)

    new = traverse_util.flatten_dict(jax.device_get(one_update(params)))
    for path, value in traverse_util.flatten_dict(jax.device_get(params)).items():
        if optim.param_group(path, "lora") == "frozen":
            np.testing.assert_array_equal(new[path], value, err_msg="/".join(path))
        else:
            assert not np.array_equal(new[path], value), "/".join(path)


def test_gradient_accumulation_matches_one_big_batch(initial):
    """MultiSteps over two half-filled batches == one step on the full batch (global-row mean)."""
    mesh = train_step.make_mesh(jax.devices()[:1])
    full = random_batch(5, rows=8, real_rows=8)
    first, second = (dict(full, row_weight=(np.arange(8) // 4 == h).astype(np.float32)) for h in (0, 1))
    state, frozen, optimizer = initial
    accumulating = optim.make_optimizer(train_config(grad_accum_steps=2).train, state["trainable"], total_steps=10)

    def final(optimizer, batches):
        st = jax.tree.map(jnp.array, state)
        st["opt_state"] = optimizer.init(st["trainable"])
        step = train_step.make_train_step(MODEL, optimizer, mesh)
        for b in batches:
            st, _ = step(st, frozen, train_step.shard_batch(b, mesh))
        return traverse_util.flatten_dict(jax.device_get(st["trainable"]))

    whole = final(optimizer, [full])
    accumulated = final(accumulating, [first, second])
    for path in whole:
        np.testing.assert_allclose(accumulated[path], whole[path], atol=1e-5, err_msg="/".join(path))
