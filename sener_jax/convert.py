"""Checkpoint conversion: Hugging Face DeBERTa-v2/v3 weights -> `DebertaEncoder` params, and an
Orbax export of converted params with a matching loader.

    python -m sener_jax.convert HF_DIR_OR_HUB_NAME OUT_DIR

writes OUT_DIR/encoder_config.json, OUT_DIR/params (Orbax) and OUT_DIR/MANIFEST.json;
`load_encoder(OUT_DIR)` reads them back. OUT_DIR must be new or empty; `--overwrite` replaces an
encoder converted earlier (never another directory).

The SeNER authors' released checkpoints have their own loader and command,
`python -m sener_jax.authors_checkpoint` (it builds on this module; this module never imports it).
The small helpers here (state-dict readers, key mapping, shape checking) are meant to be reused by
other checkpoint formats.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from sener_jax.manifest import write_manifest
from sener_jax.models.deberta import EncoderConfig, init_encoder_params
from sener_jax.models.layer_stack import is_stacked, stack_flat, stack_tree, unstack_flat, unstack_tree
from sener_jax.models.lora import is_lora_path
from sener_jax.output_dir import check_target, staged_directory

CONFIG_FILE = "encoder_config.json"
PARAMS_DIR = "params"
MANIFEST_KIND = "encoder"  # the kind in MANIFEST.json: what `--overwrite` may replace
ENCODER_PREFIX = "deberta."
# Buffers, not parameters, that some checkpoints carry.
IGNORED_BUFFERS = ("embeddings.position_ids",)

# ---------------------------------------------------------------------------------------------
# Reading state dicts (name -> float32 numpy array, PyTorch layout)
# ---------------------------------------------------------------------------------------------

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file as float32/int numpy arrays (bfloat16 included)."""
    raw = pathlib.Path(path).read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    try:
        header = json.loads(raw[8 : 8 + header_len])
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not a safetensors file ({error})") from error
    data = memoryview(raw)[8 + header_len :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        chunk = data[start:end]
        if info["dtype"] == "BF16":
            array = (np.frombuffer(chunk, np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif info["dtype"] in _SAFETENSORS_DTYPES:
            array = np.frombuffer(chunk, _SAFETENSORS_DTYPES[info["dtype"]])
        else:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        tensors[name] = array.reshape(info["shape"]).copy()
    return tensors


def read_torch_bin(path: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        import torch  # deferred: heavy and optional, only pytorch_model.bin needs it
    except ImportError as error:
        raise ImportError(f"{path}: reading pytorch_model.bin needs torch (or convert it to safetensors)") from error
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {name: tensor.detach().float().numpy() if tensor.is_floating_point() else tensor.numpy()
            for name, tensor in state.items()}


def read_hf_state_dict(model_dir: pathlib.Path) -> dict[str, np.ndarray]:
    """The weights of a Hugging Face model directory: model.safetensors, pytorch_model.bin, or
    their sharded forms (*.index.json)."""
    model_dir = pathlib.Path(model_dir)
    candidates = [
        ("model.safetensors", read_safetensors),
        ("model.safetensors.index.json", read_safetensors),
        ("pytorch_model.bin", read_torch_bin),
        ("pytorch_model.bin.index.json", read_torch_bin),
    ]
    for file_name, reader in candidates:
        path = model_dir / file_name
        if not path.is_file():
            continue
        if file_name.endswith(".index.json"):
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            state = {}
            for shard in shards:
                state.update(reader(model_dir / shard))
            return state
        return reader(path)
    raise FileNotFoundError(
        f"{model_dir}: no weights found; expected one of {[name for name, _ in candidates]}"
    )


# ---------------------------------------------------------------------------------------------
# Key mapping and checking (reusable for other checkpoint formats)
# ---------------------------------------------------------------------------------------------


def flax_path_to_hf_key(path: tuple[str, ...]) -> tuple[str, bool]:
    """(Hugging Face key, whether the array is transposed) for a per-layer Flax param path.

    Stacked paths (`encoder/layer/...`, leading layer axis) are split into layer_<n> paths first
    (`layer_stack.unstack_flat`, as `assign_params` does). layer_<n> -> layer.<n>; LayerNorm scale -> weight; Embed embedding -> weight; Dense kernel
    (in, out) -> Linear weight (out, in), transposed.
    """
    parts: list[str] = []
    for part in path[:-1]:
        if part.startswith("layer_") and part[len("layer_"):].isdigit():
            parts += ["layer", part[len("layer_"):]]
        else:
            parts.append(part)
    leaf = path[-1]
    transpose = False
    if leaf in ("scale", "embedding"):
        leaf = "weight"
    elif leaf == "kernel":
        leaf, transpose = "weight", True
    return ".".join(parts + [leaf]), transpose


def expected_param_shapes(config: EncoderConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flat {Flax path: shape} of a `DebertaEncoder(config)` (abstract init, nothing allocated).

    With `config.scan_layers` (the default) layer parameters are stacked: (num_hidden_layers, ...)."""
    shapes = jax.eval_shape(lambda: init_encoder_params(config, jax.random.PRNGKey(0)))
    return {path: tuple(leaf.shape) for path, leaf in traverse_util.flatten_dict(shapes).items()}


def split_encoder_state(state: Mapping[str, np.ndarray], prefix: str = ENCODER_PREFIX):
    """(encoder weights without `prefix`, names left aside).

    With prefixed keys (task models such as DebertaV2ForMaskedLM), keys outside the prefix
    belong to task heads and are left aside; without any, every key must be an encoder key.
    """
    if any(name.startswith(prefix) for name in state):
        encoder = {name[len(prefix):]: value for name, value in state.items() if name.startswith(prefix)}
        aside = sorted(name for name in state if not name.startswith(prefix))
        return encoder, aside
    return dict(state), []


def assign_params(
    expected: Mapping[tuple[str, ...], tuple[int, ...]],
    state: Mapping[str, np.ndarray],
    key_for: Callable[[tuple[str, ...]], tuple[str, bool]],
    *,
    ignore: Callable[[str], bool] = lambda name: False,
    source: str = "checkpoint",
) -> dict:
    """Fill every expected Flax path from `state` through `key_for`, checking shapes.

    Stacked layer paths are filled one layer at a time (`key_for` sees layer_<n> paths) and
    stacked again. Raises one ValueError listing every missing key, unexpected key and shape
    mismatch by name.
    """
    flat, used, problems = {}, set(), []
    stacked = is_stacked(expected)
    for path, shape in unstack_flat(expected, shapes=True).items():
        key, transpose = key_for(path)
        if key not in state:
            problems.append(f"missing key {key!r} (for {'/'.join(path)}, shape {shape})")
            continue
        used.add(key)
        array = np.asarray(state[key])
        if transpose:
            array = array.T
        if tuple(array.shape) != tuple(shape):
            stored = tuple(np.asarray(state[key]).shape)
            wanted = tuple(reversed(shape)) if transpose else tuple(shape)
            problems.append(f"key {key!r} has shape {stored}, expected {wanted} from the config")
            continue
        flat[path] = np.ascontiguousarray(array, dtype=np.float32)
    for key in sorted(set(state) - used):
        if not ignore(key):
            problems.append(f"unexpected key {key!r} (shape {tuple(np.asarray(state[key]).shape)})")
    if problems:
        raise ValueError(f"{source}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return traverse_util.unflatten_dict(stack_flat(flat) if stacked else flat)


def hf_state_to_params(state: Mapping[str, np.ndarray], config: EncoderConfig, source: str = "checkpoint") -> dict:
    """Map a Hugging Face DeBERTa-v2 state dict (with or without `deberta.`) onto encoder params."""
    encoder_state, _task_heads = split_encoder_state(state)

    def ignore(name: str) -> bool:
        # transformers itself drops these on load (_keys_to_ignore_on_load_unexpected).
        if name in IGNORED_BUFFERS:
            return True
        return name == "embeddings.position_embeddings.weight" and not config.position_biased_input

    return assign_params(expected_param_shapes(config), encoder_state, flax_path_to_hf_key, ignore=ignore, source=source)


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def resolve_model_dir(name_or_path: str | pathlib.Path) -> pathlib.Path:
    """A local directory as is; otherwise a Hugging Face Hub name, downloaded via huggingface_hub."""
    path = pathlib.Path(name_or_path)
    if path.is_dir():
        return path
    text = str(name_or_path)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise FileNotFoundError(f"{text}: not a model directory")
    from huggingface_hub import snapshot_download  # deferred: optional, only hub names need it

    patterns = ["config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json"]
    return pathlib.Path(snapshot_download(repo_id=text, allow_patterns=patterns))


def load_hf_deberta(path: str | pathlib.Path, **config_overrides) -> tuple[EncoderConfig, dict]:
    """(EncoderConfig, params) from a Hugging Face DeBERTa-v2/v3 directory or hub name.

    `config_overrides` set SeNER fields (attention, window, ...) but not the weight geometry.
    LoRA leaves are never in a Hugging Face checkpoint: load with lora_rank=0 and add adapters after.
    """
    model_dir = resolve_model_dir(path)
    config = EncoderConfig.from_hf_config(model_dir, **config_overrides)
    if config.lora_rank:
        raise ValueError("load_hf_deberta: lora_rank must be 0 (a Hugging Face checkpoint has no LoRA weights)")
    return config, hf_state_to_params(read_hf_state_dict(model_dir), config, source=str(model_dir))


def save_encoder(out_dir: str | pathlib.Path, config: EncoderConfig, params: Mapping, *, overwrite: bool = False) -> pathlib.Path:
    """Write OUT_DIR/encoder_config.json, OUT_DIR/params (an Orbax checkpoint) and OUT_DIR/MANIFEST.json.

    Written beside OUT_DIR and renamed into place (`sener_jax.output_dir`): an existing converted
    encoder is replaced only with `overwrite`, any other non-empty directory is refused.
    """
    out_dir = pathlib.Path(out_dir).absolute()
    with staged_directory(out_dir, kind=MANIFEST_KIND, overwrite=overwrite) as staging:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(staging / PARAMS_DIR, jax.tree.map(np.asarray, dict(params)))
        checkpointer.wait_until_finished()
        (staging / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
        write_manifest(staging, kind=MANIFEST_KIND)  # last: the commit marker
    return out_dir


def load_encoder(out_dir: str | pathlib.Path) -> tuple[EncoderConfig, dict]:
    """(EncoderConfig, params) written by `save_encoder` / `python -m sener_jax.convert`."""
    out_dir = pathlib.Path(out_dir).resolve()
    config_path = out_dir / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: missing (not an exported encoder directory)")
    config = EncoderConfig.from_dict(json.loads(config_path.read_text()))
    target = jax.eval_shape(lambda: init_encoder_params(config, jax.random.PRNGKey(0)))
    checkpointer = ocp.StandardCheckpointer()
    try:
        params = checkpointer.restore(out_dir / PARAMS_DIR, target)
    except (ValueError, KeyError) as error:
        if not is_stacked(traverse_util.flatten_dict(target)):
            raise
        # An export written before the layers were scanned: one layer_<n> tree per layer.
        try:
            params = stack_tree(checkpointer.restore(out_dir / PARAMS_DIR, unstack_tree(target)))
        except (ValueError, KeyError):
            raise error from None
    return config, params


# ---------------------------------------------------------------------------------------------
# A pretrained encoder for training: a converted directory, or Hugging Face weights
# ---------------------------------------------------------------------------------------------


def _is_converted_dir(spec: str) -> bool:
    return (pathlib.Path(spec) / CONFIG_FILE).is_file()


def pretrained_encoder_config(spec: str) -> EncoderConfig:
    """The geometry of a pretrained encoder: a `sener_jax.convert` output directory, or a Hugging
    Face directory / hub name (its config.json)."""
    if _is_converted_dir(spec):
        return EncoderConfig.from_dict(json.loads((pathlib.Path(spec) / CONFIG_FILE).read_text()))
    return EncoderConfig.from_hf_config(resolve_model_dir(spec))


def load_pretrained_encoder(spec: str, random_params: dict) -> dict:
    """Pretrained encoder weights in the layout of `random_params`; LoRA leaves (never part of a
    pretrained checkpoint) keep their fresh initialisation (B = 0: the adapter starts as a no-op)."""
    _, loaded = load_encoder(spec) if _is_converted_dir(spec) else load_hf_deberta(spec)
    loaded = traverse_util.flatten_dict(jax.device_get(loaded))
    out = {}
    for path, fresh in traverse_util.flatten_dict(random_params).items():
        if is_lora_path(path):
            out[path] = fresh
            continue
        if path not in loaded:
            raise ValueError(f"pretrained encoder {spec}: parameter {'/'.join(path)} is missing")
        if tuple(loaded[path].shape) != tuple(fresh.shape):
            raise ValueError(
                f"pretrained encoder {spec}: parameter {'/'.join(path)} has shape {tuple(loaded[path].shape)}, "
                f"the configured model expects {tuple(fresh.shape)}"
            )
        out[path] = jnp.asarray(loaded[path], fresh.dtype)
    return traverse_util.unflatten_dict(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(arg == "--authors" or arg.startswith("--authors=") for arg in argv):
        # The old spelling of the authors' converter. Not forwarded: authors_checkpoint imports this
        # module, so calling it from here (even imported inside this function) would be an import
        # circle again; a clear pointer to the new command costs the user one word.
        print(
            "error: `python -m sener_jax.convert --authors ...` moved to `python -m sener_jax.authors_checkpoint "
            "--authors ...` (same arguments)",
            file=sys.stderr,
        )
        return 2
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="Hugging Face model directory or hub name (e.g. microsoft/deberta-v3-large)")
    parser.add_argument("out_dir", help="output directory (encoder_config.json + Orbax params); must be new or empty")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it holds an encoder converted earlier")
    args = parser.parse_args(argv)
    check_target(args.out_dir, kind=MANIFEST_KIND, overwrite=args.overwrite)  # before the slow conversion
    config, params = load_hf_deberta(args.source)
    out = save_encoder(args.out_dir, config, params, overwrite=args.overwrite)
    count = sum(np.size(leaf) for leaf in jax.tree.leaves(params))
    print(f"wrote {out} ({count:,} parameters, {config.num_hidden_layers} layers, hidden {config.hidden_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
