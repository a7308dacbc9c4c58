"""The training step and what it runs on: model config, train state, batches, mesh.

  - `model_config_from(config, vocab_size, num_types)`  the SenerConfig a run uses
  - `create_train_state(config, model_config, total_updates, rng)`
                                  initial (state, frozen, optimizer); `abstract_train_state` gives the
                                  same as ShapeDtypeStructs without computing it
  - `make_train_step(model_config, optimizer, mesh)`
                                  ONE jitted function (state, frozen, batch) -> (state, metrics);
                                  lowerable with abstract inputs (`compiled_memory` does that)

Sharding: a 1-D mesh over all devices with axis "data"; params and optimizer state replicated,
batches sharded along rows. The step's loss is normalised by the GLOBAL number of real rows, so
the result does not depend on the number of devices.
"""
from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sener_jax import distributed, optim
from sener_jax.convert import load_pretrained_encoder, pretrained_encoder_config
from sener_jax.losses import span_bce_loss
from sener_jax.models.deberta import SENER_FIELDS, EncoderConfig
from sener_jax.models.layer_stack import replace_top_layers
from sener_jax.models.sener import SenerConfig, band_logits, init_params
from sener_jax.band_layout import band_cell_mask, band_targets
from sener_jax.models.span_head import SpanHeadConfig

logger = logging.getLogger(__name__)

BATCH_KEYS = ("input_ids", "attention_mask", "word_index", "word_mask", "labels", "label_spans", "row_weight")
# EncoderConfig fields that stay as the config says when a pretrained encoder is loaded: SeNER's own
# choices and the dropout rates (e.g. attention dropout 0 for the Pallas kernel, which has none).
# Every other field (the geometry) comes from the checkpoint.
SENER_ENCODER_FIELDS = SENER_FIELDS + ("hidden_dropout_prob", "attention_probs_dropout_prob")


# ----------------------------------------------------------------------------------------------
# Model and parameters
# ----------------------------------------------------------------------------------------------


def model_config_from(config: ml_collections.ConfigDict, vocab_size: int, num_types: int) -> SenerConfig:
    """The SenerConfig of a run. With a pretrained encoder its geometry comes from the checkpoint."""
    fields = config.model.encoder.to_dict()
    if fields.get("vocab_size", 0) <= 0:
        fields["vocab_size"] = vocab_size
    if fields.get("pos_att_type") is not None:
        fields["pos_att_type"] = tuple(fields["pos_att_type"])
    encoder = EncoderConfig.from_dict(fields)
    if config.model.pretrained:
        pretrained = pretrained_encoder_config(config.model.pretrained)
        encoder = dataclasses.replace(pretrained, **{k: getattr(encoder, k) for k in SENER_ENCODER_FIELDS})
    if encoder.vocab_size < vocab_size:
        raise ValueError(
            f"model.encoder.vocab_size={encoder.vocab_size} is smaller than the tokenizer's vocabulary ({vocab_size})"
        )
    # from_dict: a user config still setting the old head `window` is read, with a warning.
    head = SpanHeadConfig.from_dict({"num_types": num_types, **config.model.head.to_dict()})
    return SenerConfig(encoder=encoder, head=head, pool_impl=config.model.pool_impl)


def initial_params(config, model_config: SenerConfig, rng: jax.Array, *, training: bool = True) -> dict:
    """Random params, with the encoder replaced by the pretrained one when configured.

    `training=False` (the skeleton a checkpoint is restored into) logs no "RANDOM weights"
    warning: the caller says what it loads instead."""
    params = init_params(model_config, rng)
    if not config.model.pretrained:
        if not training:
            return params
        if config.model.get("reinit_top_layers", 0):
            logger.info("model.reinit_top_layers has no effect: the whole encoder is random already")
        logger.warning(
            "model.pretrained is empty: the encoder starts from RANDOM weights (fine for the demo and "
            "tests; set --config.model.pretrained=microsoft/deberta-v3-large or a directory for real runs)"
        )
        return params
    logger.info("loading the pretrained encoder from %s", config.model.pretrained)
    fresh = params["encoder"]
    params["encoder"] = load_pretrained_encoder(config.model.pretrained, fresh)
    reinit = config.model.get("reinit_top_layers", 0)
    if reinit:
        logger.info("re-initialising the top %d encoder layer(s) (model.reinit_top_layers)", reinit)
        params["encoder"] = replace_top_layers(params["encoder"], fresh, reinit)
    return params


def _train_state(config, params: dict, total_updates: int, rng: jax.Array):
    """(state, frozen, optimizer) around `params`: the one layout real and abstract states share."""
    trainable, frozen = optim.split_trainable(params, config.train.finetune)
    optimizer = optim.make_optimizer(config.train, trainable, total_updates)
    state = {
        "step": jnp.zeros((), jnp.int32),
        "trainable": trainable,
        "opt_state": optimizer.init(trainable),
        "rng": rng,
        "health": initial_health(),
    }
    return state, frozen, optimizer


def initial_health() -> dict:
    """Device-side counters of non-finite steps, updated inside the jitted step (no host sync):
    total skipped steps, the current and the longest run of consecutive ones, and the first such
    step (-1: none). The loop reads them only where it fetches values anyway (`train_health`)."""
    # One array per field: the state is donated, and one buffer donated twice is an error.
    return {name: jnp.full((), value, jnp.int32)
            for name, value in (("nonfinite_steps", 0), ("consecutive", 0), ("longest_run", 0), ("first_step", -1))}


def next_health(health: dict, finite, step) -> dict:
    bad = jnp.logical_not(finite).astype(jnp.int32)
    consecutive = (health["consecutive"] + 1) * bad
    return {
        "nonfinite_steps": health["nonfinite_steps"] + bad,
        "consecutive": consecutive,
        "longest_run": jnp.maximum(health["longest_run"], consecutive),
        "first_step": jnp.where((health["first_step"] < 0) & (bad > 0), step, health["first_step"]),
    }


def create_train_state(config, model_config: SenerConfig, total_updates: int, rng: jax.Array):
    """(state, frozen, optimizer). `state` = {"step", "trainable", "opt_state", "rng"} holds everything
    that changes during training; `frozen` holds the encoder weights that never do (no optimizer state)."""
    init_key, dropout_key = jax.random.split(rng)
    return _train_state(config, initial_params(config, model_config, init_key), total_updates, dropout_key)


def abstract_train_state(config, model_config: SenerConfig, total_updates: int = 1000):
    """(state, frozen) as ShapeDtypeStructs (nothing allocated) plus the optimizer: for `.lower()`."""
    optimizer_box = []

    def build():
        params = init_params(model_config, jax.random.PRNGKey(0))
        state, frozen, optimizer = _train_state(config, params, total_updates, jax.random.PRNGKey(0))
        optimizer_box.append(optimizer)
        return state, frozen

    state, frozen = jax.eval_shape(build)
    return state, frozen, optimizer_box[0]


def abstract_batch(batch_size: int, n_tokens: int, n_words: int, window: int, num_types: int,
                   label_capacity: int | None = None) -> dict:
    """ShapeDtypeStructs of one global training batch (sparse `label_spans` with `label_capacity`)."""
    s = jax.ShapeDtypeStruct
    arrays = {
        "input_ids": s((batch_size, n_tokens), jnp.int32),
        "attention_mask": s((batch_size, n_tokens), jnp.int32),
        "word_index": s((batch_size, n_tokens), jnp.int32),
        "word_mask": s((batch_size, n_words), jnp.bool_),
        "labels": s((batch_size, n_words, 2 * window + 1, num_types), jnp.uint8),
        "row_weight": s((batch_size,), jnp.float32),
    }
    if label_capacity is not None:
        del arrays["labels"]
        arrays["label_spans"] = s((batch_size, label_capacity, 3), jnp.int32)
    return arrays


# ----------------------------------------------------------------------------------------------
# Mesh and placement
# ----------------------------------------------------------------------------------------------


def make_mesh(devices=None) -> Mesh:
    devices = np.asarray(devices if devices is not None else jax.devices())
    return Mesh(devices.reshape(-1), ("data",))


def replicate(tree, mesh: Mesh):
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(arrays: dict, mesh: Mesh) -> dict:
    return jax.device_put(arrays, NamedSharding(mesh, P("data")))


def abstract_on(tree, sharding):
    """ShapeDtypeStructs of `tree` (arrays or ShapeDtypeStructs) placed with `sharding`."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def abstract_replicated(tree, mesh: Mesh):
    """`tree` as ShapeDtypeStructs replicated on `mesh`: the target a checkpoint restores into."""
    return abstract_on(tree, NamedSharding(mesh, P()))


def device_batch(batch, mesh: Mesh) -> dict:
    """A data Batch -> the sharded arrays the step takes (row_weight = 1 for real rows, 0 for padding)."""
    arrays = {k: batch.arrays[k] for k in BATCH_KEYS if k in batch.arrays}
    arrays["row_weight"] = batch.row_valid.astype(np.float32)
    # Each process holds only its rows (multi-host): assemble the global array from them.
    return distributed.global_batch(arrays, mesh)


# ----------------------------------------------------------------------------------------------
# The step
# ----------------------------------------------------------------------------------------------


def loss_sum(model_config: SenerConfig, params, batch, *, deterministic: bool, dropout_key=None,
             positive_weight: float = 1.0):
    """Sum over the rows of `batch` of row_weight * (BCE summed over the row's valid cells)."""
    logits = band_logits(
        model_config, params, batch["input_ids"], batch["attention_mask"], batch["word_index"], batch["word_mask"],
        deterministic=deterministic, rngs=None if deterministic else {"dropout": dropout_key},
    )
    window = model_config.head.band_half_width
    cells = band_cell_mask(batch["word_mask"], window)
    weight = batch["row_weight"]
    labels = batch.get("labels")
    if labels is None:  # sparse spans from the host: build the dense targets here, on the device
        labels = band_targets(batch["label_spans"], logits.shape[1], window, logits.shape[3])
    # span_bce_loss is sum(weight * row_loss) / sum(weight): times sum(weight) gives the weighted sum.
    return span_bce_loss(logits, labels, cells, row_weight=weight, positive_weight=positive_weight) * jnp.sum(weight)


def make_train_step(model_config: SenerConfig, optimizer: optax.GradientTransformation, mesh: Mesh, *,
                    deterministic: bool = False, positive_weight: float = 1.0):
    """The training step: one jitted function (state, frozen, batch) -> (state, {"loss", "grad_norm", "finite"}).

    Inside, a shard_map over the "data" axis computes each device's share of the loss, normalised
    by the global number of real rows, and its gradient; the optimizer update then runs on the
    replicated (summed) gradient. `state` is donated. Inputs must already live on `mesh`:
    state/frozen replicated (`replicate`), the batch sharded along rows (`shard_batch`).
    """
    if not positive_weight > 0:
        raise ValueError(f"train.positive_weight must be > 0 (1.0: the paper's loss), got {positive_weight}")

    def device_grads(trainable, frozen, batch, rng, step):
        key = jax.random.fold_in(jax.random.fold_in(rng, step), jax.lax.axis_index("data"))
        global_rows = jnp.maximum(jax.lax.psum(jnp.sum(batch["row_weight"]), "data"), 1.0)

        def loss_fn(train_params):
            params = optim.merge_params(train_params, frozen)
            return loss_sum(model_config, params, batch, deterministic=deterministic, dropout_key=key,
                            positive_weight=positive_weight) / global_rows

        loss, grads = jax.value_and_grad(loss_fn)(trainable)
        # `trainable` enters replicated (P()); with shard_map's varying-axis checks (check_vma),
        # the gradient w.r.t. a replicated input is already summed over "data" by the transpose
        # of the implicit broadcast, so only the loss needs an explicit psum.
        return jax.lax.psum(loss, "data"), grads

    sharded = jax.shard_map(
        device_grads,
        mesh=mesh,
        in_specs=(P(), P(), P("data"), P(), P()),
        out_specs=(P(), P()),
    )

    def step(state, frozen, batch):
        loss, grads = sharded(state["trainable"], frozen, batch, state["rng"], state["step"])
        grad_norm = optax.tree.norm(grads)
        # A non-finite loss or gradient skips the update ON THE DEVICE (params and optimizer state
        # kept, as optax.apply_if_finite does; that one checks only the gradient and applies the
        # update anyway after too many in a row) and is counted in state["health"]: the state never
        # holds NaN, and the loop decides (train.nonfinite) when it next reads the counters.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["trainable"])
        trainable = optax.apply_updates(state["trainable"], updates)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        new_state = {
            "step": state["step"] + 1,
            "trainable": keep(trainable, state["trainable"]),
            "opt_state": keep(opt_state, state["opt_state"]),
            "rng": state["rng"],
            "health": next_health(state["health"], finite, state["step"] + 1),
        }
        return new_state, {"loss": loss, "grad_norm": grad_norm, "finite": finite}

    return jax.jit(step, donate_argnums=(0,))


# ----------------------------------------------------------------------------------------------
# Memory of the compiled step (nothing allocated)
# ----------------------------------------------------------------------------------------------


def memory_analysis(compiled) -> dict[str, int]:
    """XLA's buffer assignment of a compiled program: arguments, outputs, aliased (donated) and
    temporary bytes, and peak = arguments + outputs - aliased + temporaries."""
    stats = compiled.memory_analysis()
    if stats is None:
        raise RuntimeError(f"backend {jax.default_backend()!r} gives no compiled memory analysis")
    parts = {
        "arguments": int(stats.argument_size_in_bytes),
        "outputs": int(stats.output_size_in_bytes),
        "aliased": int(stats.alias_size_in_bytes),
        "temporaries": int(stats.temp_size_in_bytes),
    }
    parts["peak"] = parts["arguments"] + parts["outputs"] - parts["aliased"] + parts["temporaries"]
    return parts


def compile_train_step(model_config: SenerConfig, optimizer, state, frozen, batch, mesh: Mesh | None = None):
    """The train step compiled for abstract (or real) inputs of these shapes on `mesh` (default: one
    device): state/frozen replicated, the global `batch` sharded along rows. Allocates nothing."""
    mesh = mesh if mesh is not None else make_mesh(jax.devices()[:1])
    step = make_train_step(model_config, optimizer, mesh)
    rows = NamedSharding(mesh, P("data"))
    return step.lower(abstract_replicated(state, mesh), abstract_replicated(frozen, mesh),
                      abstract_on(batch, rows)).compile()


def compiled_memory(model_config: SenerConfig, optimizer, state, frozen, batch, mesh: Mesh | None = None
                    ) -> dict[str, int]:
    """Per-device `memory_analysis` of the train step compiled on abstract inputs (`compile_train_step`)."""
    return memory_analysis(compile_train_step(model_config, optimizer, state, frozen, batch, mesh))
