"""The encoder's layers as one stacked ("scanned") module, and the per-layer view of its params.

`Encoder` runs its layers under `nn.scan`: every layer parameter is stored once, under the module
name `STACKED` ("layer"), with a leading axis of length num_hidden_layers. Checkpoint formats
(Hugging Face, the authors') name one tensor per layer (`encoder.layer.3....`), and the unrolled
reference encoder names its modules `layer_<n>`; these helpers convert between the two views.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import jax
import numpy as np
from flax import traverse_util

STACKED = "layer"
_PER_LAYER = re.compile(r"layer_(\d+)$")


def layer_name(index: int) -> str:
    return f"layer_{index}"


def layer_index(part: str) -> int | None:
    """n for a module name layer_<n> (the unrolled layout), else None."""
    match = _PER_LAYER.match(part)
    return int(match.group(1)) if match else None


def _stacked_at(path: tuple[str, ...]) -> int | None:
    return path.index(STACKED) if STACKED in path else None


def _layer_of(value, index: int):
    if isinstance(value, jax.ShapeDtypeStruct):  # abstract trees (eval_shape targets)
        return jax.ShapeDtypeStruct(value.shape[1:], value.dtype, sharding=value.sharding)
    return value[index]


def unstack_flat(flat: Mapping[tuple[str, ...], object], *, shapes: bool = False) -> dict:
    """{path: value} with every stacked path (a `STACKED` part) split into layer_<n> paths.

    `shapes=True`: the values are shape tuples (the leading axis is dropped), else arrays."""
    out = {}
    for path, value in flat.items():
        at = _stacked_at(path)
        if at is None:
            out[path] = value
            continue
        count = value[0] if shapes else np.shape(value)[0]
        for index in range(count):
            per_layer = path[:at] + (layer_name(index),) + path[at + 1:]
            out[per_layer] = tuple(value[1:]) if shapes else _layer_of(value, index)
    return out


def stack_flat(flat: Mapping[tuple[str, ...], object]) -> dict:
    """{path: array} with layer_<n> paths (n = 0..L-1, no gaps) stacked under `STACKED`."""
    groups: dict[tuple, dict[int, object]] = {}
    out = {}
    for path, value in flat.items():
        at = next((i for i, part in enumerate(path) if layer_index(part) is not None), None)
        if at is None:
            out[path] = value
            continue
        index = layer_index(path[at])
        groups.setdefault(path[:at] + (STACKED,) + path[at + 1:], {})[index] = value
    for path, by_index in groups.items():
        if sorted(by_index) != list(range(len(by_index))):
            raise ValueError(f"{'/'.join(path)}: layers {sorted(by_index)} are not 0..{len(by_index) - 1} without gaps")
        out[path] = np.stack([np.asarray(by_index[i]) for i in range(len(by_index))])
    return out


def stack_tree(tree: Mapping) -> dict:
    """Nested params with layer_<n> modules -> the stacked layout (a no-op when already stacked)."""
    return traverse_util.unflatten_dict(stack_flat(traverse_util.flatten_dict(dict(tree))))


def unstack_tree(tree: Mapping) -> dict:
    """Nested params in the stacked layout -> one layer_<n> module per layer."""
    return traverse_util.unflatten_dict(unstack_flat(traverse_util.flatten_dict(dict(tree))))


def is_stacked(flat_paths) -> bool:
    return any(STACKED in path for path in flat_paths)


def replace_top_layers(params: Mapping, fresh: Mapping, count: int) -> dict:
    """`params` with the parameters of its top `count` encoder layers taken from `fresh` (the same
    tree layout, stacked or unrolled): re-initialising the layers nearest the output, whose features
    are the most specific to the pretraining objective (Zhang et al. 2021, "Revisiting few-sample
    BERT fine-tuning"). Embeddings and every parameter outside a layer stay as in `params`."""
    flat, flat_fresh = traverse_util.flatten_dict(dict(params)), traverse_util.flatten_dict(dict(fresh))
    if set(flat) != set(flat_fresh):
        raise ValueError("replace_top_layers: the two trees have different parameter paths")
    if is_stacked(flat):
        layers = max(int(np.shape(value)[0]) for path, value in flat.items() if STACKED in path)
    else:
        layers = 1 + max((index for path in flat for index in map(layer_index, path) if index is not None), default=-1)
    if not 0 <= count <= layers:
        raise ValueError(f"cannot re-initialise the top {count} layers of an encoder with {layers} layers")
    first = layers - count
    out = {}
    for path, value in flat.items():
        if STACKED in path:
            out[path] = value.at[first:].set(flat_fresh[path][first:]) if count else value
            continue
        index = next((i for i in map(layer_index, path) if i is not None), None)
        out[path] = flat_fresh[path] if index is not None and index >= first else value
    return traverse_util.unflatten_dict(out)
