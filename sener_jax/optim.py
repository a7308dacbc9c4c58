"""The optimizer: AdamW per parameter group, chosen by a label function over param paths.

Groups (SPEC section 8): the span head trains fully at `lr_head`; in LoRA mode the encoder's
`lora_a`/`lora_b` and the query/value biases train at `lr_lora`; in full fine-tuning every encoder
weight trains at `lr_encoder`; everything else is frozen. Weight decay applies to every trained
weight except LayerNorm parameters and biases, so each group is split into a "decay" and a
"no_decay" label. Frozen leaves never reach the optimizer: `split_trainable` separates them before
`jax.grad`, so they get neither gradients nor optimizer state (the "frozen" label maps to
`optax.set_to_zero()`, stateless, for callers that pass a full tree anyway).

Layer-wise learning-rate decay (`train.layer_lr_decay`, 1.0 = off, the paper): the encoder's top layer
trains at its group's rate and every step down multiplies it by the decay, so a pretrained encoder's
lower layers move least (ELECTRA / DeBERTa fine-tuning practice). Applied after AdamW, it scales the
whole update, weight decay included, exactly as a per-layer learning rate would.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import optax
from flax import traverse_util

from sener_jax.models.layer_stack import STACKED, layer_index
from sener_jax.models.lora import is_lora_path

Params = Mapping[str, Any]

FINETUNE_MODES = ("lora", "full", "head")
LORA_TARGETS = ("query_proj", "value_proj")
GROUPS = ("head", "lora", "encoder")  # the trained groups, in the order logs show them


def param_group(path: tuple[str, ...], finetune: str) -> str:
    """'head', 'lora', 'encoder' or 'frozen' for one parameter path, e.g. ('head', 'out', 'kernel')."""
    if finetune not in FINETUNE_MODES:
        raise ValueError(f"train.finetune must be one of {FINETUNE_MODES}, got {finetune!r}")
    if path[0] == "head":
        return "head"
    if path[0] != "encoder":
        raise ValueError(f"parameter {'/'.join(path)} belongs to neither the encoder nor the head")
    if finetune == "full":
        return "encoder"
    if finetune == "lora":
        if is_lora_path(path):
            return "lora"
        # SPEC section 8: the query/value biases train together with their LoRA matrices.
        if path[-1] == "bias" and len(path) >= 2 and path[-2] in LORA_TARGETS:
            return "lora"
    return "frozen"


def trained_groups(params: Params, finetune: str) -> tuple[str, ...]:
    """The groups (in `GROUPS` order) that some leaf of `params` trains in, e.g. ("head", "lora")."""
    used = {param_group(path, finetune) for path in traverse_util.flatten_dict(params)}
    return tuple(group for group in GROUPS if group in used)


def decays(path: tuple[str, ...]) -> bool:
    """Weight decay for every weight except biases and normalisation parameters."""
    if path[-1] == "bias":
        return False
    return not any("norm" in part.lower() for part in path)


def param_label(path: tuple[str, ...], finetune: str) -> str:
    group = param_group(path, finetune)
    if group == "frozen":
        return "frozen"
    return f"{group}/{'decay' if decays(path) else 'no_decay'}"


def param_labels(params: Params, finetune: str) -> dict:
    """The label tree (same structure as `params`)."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({path: param_label(path, finetune) for path in flat})


def split_trainable(params: Params, finetune: str) -> tuple[dict, dict]:
    """(trainable, frozen): two disjoint nested dicts whose union is `params`."""
    flat = traverse_util.flatten_dict(params)
    trainable = {p: v for p, v in flat.items() if param_group(p, finetune) != "frozen"}
    frozen = {p: v for p, v in flat.items() if param_group(p, finetune) == "frozen"}
    if not trainable:
        raise ValueError(f"train.finetune={finetune!r} leaves no parameter to train")
    return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge_params(trainable: Params, frozen: Params) -> dict:
    """Inverse of `split_trainable`."""
    flat = dict(traverse_util.flatten_dict(frozen))
    flat.update(traverse_util.flatten_dict(trainable))
    return traverse_util.unflatten_dict(flat)


def learning_rate_schedule(peak: float, total_steps: int, warmup_fraction: float) -> optax.Schedule:
    """Linear warm-up over the first `warmup_fraction` of the steps, then linear decay to 0."""
    total_steps = max(int(total_steps), 1)
    warmup = int(round(warmup_fraction * total_steps))
    if warmup == 0:
        return optax.linear_schedule(peak, 0.0, total_steps)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup), optax.linear_schedule(peak, 0.0, max(total_steps - warmup, 1))],
        [warmup],
    )


def group_learning_rates(train_config) -> dict[str, float]:
    return {"head": train_config.lr_head, "lora": train_config.lr_lora, "encoder": train_config.lr_encoder}


def _unrolled_layer(path: tuple[str, ...]) -> int | None:
    """n when `path` lies in a layer_<n> module (the unrolled layout), else None."""
    return next((index for index in map(layer_index, path) if index is not None), None)


def count_layers(paths) -> int:
    """Encoder layers in a tree given by its (path, leaf) pairs: the stacked leaves' leading axis, or
    the number of layer_<n> modules (the unrolled layout). Only the encoder's paths count."""
    count = 0
    for path, leaf in paths:
        if path[0] != "encoder":
            continue
        if STACKED in path:
            count = max(count, int(np.shape(leaf)[0]))
        index = _unrolled_layer(path)
        if index is not None:
            count = max(count, index + 1)
    return count


def layer_lr_multiplier(path: tuple[str, ...], leaf, decay: float, num_layers: int):
    """The factor on one leaf's update: 1 outside the encoder and for its top layer, decay**k for the
    layer k steps below the top, decay**num_layers for the embeddings and the parameters every layer
    shares (relative-position embeddings and their LayerNorm: they sit below the first layer). For a
    stacked leaf, an array (num_layers, 1, ...) that broadcasts over the leaf."""
    if path[0] != "encoder":
        return 1.0
    if STACKED in path:
        depth = np.arange(1, num_layers + 1)
        return (decay ** (num_layers - depth)).reshape((num_layers,) + (1,) * (np.ndim(leaf) - 1)).astype(np.float32)
    index = _unrolled_layer(path)
    depth = 0 if index is None else index + 1
    return float(decay ** (num_layers - depth))


def scale_by_layer_depth(decay: float) -> optax.GradientTransformation:
    """Stateless: multiplies each encoder update by `layer_lr_multiplier` (the depths come from the
    update tree's own paths and shapes, so it serves the stacked and the unrolled layout alike)."""
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"train.layer_lr_decay must be in (0, 1] (1.0: no decay, the paper's), got {decay}")

    def scale(updates, params=None):
        del params
        flat = traverse_util.flatten_dict(updates)
        layers = count_layers(flat.items())
        return traverse_util.unflatten_dict({
            path: (update * layer_lr_multiplier(path, update, decay, layers)).astype(update.dtype)
            for path, update in flat.items()})

    return optax.stateless(scale)


def make_optimizer(train_config, params: Params, total_steps: int) -> optax.GradientTransformation:
    """AdamW per label + global-norm clipping (+ MultiSteps accumulation) for the TRAINABLE tree.

    `params` is the trainable tree (or the full tree: frozen leaves are then zeroed); it is used
    only to know which labels occur. `total_steps` counts optimizer updates, i.e. micro-steps
    divided by `train_config.grad_accum_steps`.
    """
    finetune = train_config.finetune
    labels = param_labels(params, finetune)
    used = set(traverse_util.flatten_dict(labels).values())
    rates = group_learning_rates(train_config)
    transforms = {}
    for label in sorted(used):
        if label == "frozen":
            transforms[label] = optax.set_to_zero()
            continue
        group, decay = label.split("/")
        schedule = learning_rate_schedule(rates[group], total_steps, train_config.warmup_fraction)
        transforms[label] = optax.adamw(
            schedule,
            b1=train_config.adam_b1,
            b2=train_config.adam_b2,
            eps=train_config.adam_eps,
            weight_decay=train_config.weight_decay if decay == "decay" else 0.0,
        )
    optimizer = optax.chain(
        optax.clip_by_global_norm(train_config.grad_clip_norm),
        optax.multi_transform(transforms, lambda p: param_labels(p, finetune)),
    )
    decay = train_config.get("layer_lr_decay", 1.0)
    if decay != 1.0:
        optimizer = optax.chain(optimizer, scale_by_layer_depth(decay))
    if train_config.grad_accum_steps > 1:
        optimizer = optax.MultiSteps(optimizer, every_k_schedule=train_config.grad_accum_steps)
    return optimizer


def current_learning_rates(train_config, total_steps: int, update_step: int, num_layers: int = 0) -> dict[str, float]:
    """The learning rate of each group at an optimizer update count (for logging).

    Under `layer_lr_decay` the "encoder" rate is its TOP layer's; with `num_layers` > 0 the result then
    also holds "encoder_embeddings", the rate of the embeddings (decay**num_layers of it), so that a log
    does not read as if the whole encoder trained at the top layer's rate."""
    rates = {
        group: float(learning_rate_schedule(lr, total_steps, train_config.warmup_fraction)(update_step))
        for group, lr in group_learning_rates(train_config).items()
    }
    decay = train_config.get("layer_lr_decay", 1.0)
    if decay != 1.0 and num_layers > 0:
        # the embeddings' factor from the optimizer's own rule (a path outside every layer)
        rates["encoder_embeddings"] = rates["encoder"] * layer_lr_multiplier(("encoder", "embeddings"), None, decay,
                                                                             num_layers)
    return rates
