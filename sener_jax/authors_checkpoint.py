"""Load the SeNER authors' released PyTorch checkpoints into `sener_jax`.

The authors (THUDM/scholar-profiling, folder `sener/`) train `CNNNer` (their name for SeNER) wrapped
by peft LoRA (r=8, alpha=16 on `query_proj`/`value_proj`) and save `model_engine.state_dict()`
of DeepSpeed with `torch.save`. So a key looks like

    module.base_model.model.pretrain_model.encoder.layer.3.attention.self.query_proj.lora_A.default.weight

(`module.` from DeepSpeed and `base_model.model.` from peft; either may be absent). After those:

- `pretrain_model.` + Hugging Face DeBERTa-v2 names (SPEC §10); the LoRA-wrapped projections hold
  `base_layer.{weight,bias}`, `lora_A.default.weight` (r, in) and `lora_B.default.weight` (out, r);
- `head_mlp.1` / `tail_mlp.1` (Linear after a dropout at index 0), `U` (c, p, p) used as
  einsum('bxi,oij,byj') with i on the start side, `W` (c, 2p) whose first p columns act on the
  start side (our SpanHead uses both exactly so: stored as is);
- `cross_layers.n.{pos_embed, h_qkv, v_qkv, dense, LayerNorm, conv1.conv2d, conv2.conv2d,
  LayerNorm2, embed_positions}`; `embed_positions` is the fixed RoFormer sinusoid table (sin in the
  first c/2 columns, cos in the last), not a parameter of ours: it is checked against the RoPE
  table the span head uses and consumed; released checkpoints hold it shrunk by weight decay to
  a * table, and that a is folded into the q/k columns of h_qkv/v_qkv (`check_sinusoid_tables`);
- `down_fc` (R, c).

PyTorch Linear (out, in) becomes a Flax kernel (in, out); Conv2d (out, in, kh, kw) over
(row i, band index k) becomes HWIO (kh, kw, in, out). Every key must be consumed and every shape
must match, or loading fails naming the keys.

Command line (an export directory for `Extractor.load` / `--mode=predict`):

    python -m sener_jax.authors_checkpoint --authors CKPT.pth --encoder NAME_OR_DIR --labels scholar-xl OUT_DIR

Label orders. A checkpoint stores only R = rows of `down_fc`; which row is which label comes from
the authors' training script (`sener/train.py`, its `ent2id` per task), reproduced in
`AUTHORS_LABELS`. Those orders are the authors' own, not sorted; the shared data README lists the
label sets in the same order.
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
import sys
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import traverse_util

from sener_jax.convert import (
    IGNORED_BUFFERS,
    assign_params,
    flax_path_to_hf_key,
    read_safetensors,
)
from sener_jax.data import load_tokenizer
from sener_jax.export import MANIFEST_KIND as EXPORT_KIND, InferenceSettings, export_model
from sener_jax.models.deberta import EncoderConfig
from sener_jax.models.lora import merge_lora
from sener_jax.models.sener import SenerConfig, init_params
from sener_jax.authors_rope import check_sinusoid_tables, fold_rope_scales
from sener_jax.models.span_head import SpanHeadConfig
from sener_jax.output_dir import check_target

# Wrappers whose prefixes the authors' keys may carry, outermost first (DeepSpeed, then peft).
WRAPPER_PREFIXES = ("module.", "base_model.model.")
ENCODER_PREFIX = "pretrain_model."
LORA_PROJECTIONS = ("query_proj", "value_proj")
LORA_SUFFIXES = {"lora_a": "lora_A.default.weight", "lora_b": "lora_B.default.weight"}

# The authors' setup (sener/train.py and sener/modeling_deberta.py): LoRA alpha 16 (rank read from
# the checkpoint), arrow attention with a hard-coded 128-token window, span window 128 words.
AUTHORS_LORA_ALPHA = 16.0
AUTHORS_ENCODER_WINDOW = 128
AUTHORS_HEAD_WINDOW = 128

# Row order of down_fc per task: the `ent2id` dicts of the authors' sener/train.py.
AUTHORS_LABELS: dict[str, tuple[str, ...]] = {
    "scholar-xl": (
        "gender", "education", "research_interests", "work_record", "take_office", "honorary_title",
        "highest_education", "work_for", "awards", "birth_place", "birthday", "title",
    ),
    "scirex": ("Method", "Task", "Material", "Metric"),
    "profiling-07": (
        "interests", "degree", "address", "affiliation", "date", "major", "univ", "email", "fax",
        "phone", "position", "contactinfo", "education",
    ),
}

# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def read_authors_state(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """{key: numpy array} of a `.pth` (torch.save; needs torch) or `.safetensors` state dict."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    try:
        import torch  # deferred: heavy and optional, only a .pth needs it
    except ImportError as error:
        raise ImportError(
            f"{path}: reading a PyTorch checkpoint needs torch (pip install torch); or save the same "
            "state dict once with safetensors.torch.save_file and pass the .safetensors file"
        ) from error
    state = torch.load(path, map_location="cpu", weights_only=True)
    # DeepSpeed's own checkpoint files wrap the state dict; a plain torch.save of state_dict() does not.
    for wrapper in ("module", "state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), found a {type(state).__name__}")
    out = {}
    for name, tensor in state.items():
        if not hasattr(tensor, "numpy"):
            raise ValueError(f"{path}: entry {name!r} is a {type(tensor).__name__}, expected a tensor")
        tensor = tensor.detach().cpu()
        out[name] = tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
    return out


def strip_wrapper_prefixes(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keys without DeepSpeed's `module.` and peft's `base_model.model.` (each optional, in that order)."""
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        name = key
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
        if name in out:
            raise ValueError(f"checkpoint keys collide after removing wrapper prefixes: {key!r} -> {name!r}")
        out[name] = value
    return out


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------


def resolve_labels(labels: int | str | Sequence[str] | None, num_types: int) -> list[str]:
    """Label names for the R = `num_types` rows of down_fc.

    `labels`: a list of names (row order), a dataset name ("scholar-xl", "scirex", "profiling-07",
    case-insensitive: the authors' `ent2id` order), a count (names "type_0", ...), or None (count = R).
    """
    if labels is None:
        labels = num_types
    if isinstance(labels, (int, np.integer)) and not isinstance(labels, bool):
        names = [f"type_{index}" for index in range(int(labels))]
    elif isinstance(labels, str):
        key = labels.strip().lower()
        if key not in AUTHORS_LABELS:
            raise ValueError(f"labels={labels!r}: unknown dataset; expected one of {sorted(AUTHORS_LABELS)}, a list of names or a count")
        names = list(AUTHORS_LABELS[key])
    else:
        names = [str(name) for name in labels]
        if len(set(names)) != len(names):
            raise ValueError(f"labels: duplicate names in {names}")
    if len(names) != num_types:
        raise ValueError(
            f"labels: {len(names)} given ({names}) but the checkpoint's down_fc.weight has {num_types} rows (entity types)"
        )
    return names


# ---------------------------------------------------------------------------------------------
# Configuration read off the keys
# ---------------------------------------------------------------------------------------------


def _need(state: Mapping[str, np.ndarray], key: str, ndim: int) -> tuple[int, ...]:
    if key not in state:
        raise ValueError(f"missing key {key!r}: not a SeNER checkpoint in the authors' layout")
    shape = tuple(np.shape(state[key]))
    if len(shape) != ndim:
        raise ValueError(f"key {key!r} has shape {shape}, expected {ndim} dimensions")
    return shape


def _block_indices(state: Mapping[str, np.ndarray]) -> list[int]:
    indices = sorted({int(m.group(1)) for key in state if (m := re.match(r"cross_layers\.(\d+)\.", key))})
    if indices != list(range(len(indices))):
        raise ValueError(f"BiSPA blocks cross_layers.N: found N = {indices}, expected 0..{len(indices) - 1} without gaps")
    return indices


def _lora_rank(state: Mapping[str, np.ndarray]) -> int:
    ranks = {np.shape(value)[0] for key, value in state.items() if key.endswith("." + LORA_SUFFIXES["lora_a"])}
    if len(ranks) > 1:
        raise ValueError(f"LoRA ranks differ between layers ({sorted(ranks)}); expected one rank")
    return ranks.pop() if ranks else 0


def authors_config(
    state: Mapping[str, np.ndarray],
    encoder_config: EncoderConfig,
    *,
    lora_alpha: float = AUTHORS_LORA_ALPHA,
    head_window: int = AUTHORS_HEAD_WINDOW,
) -> SenerConfig:
    """The SenerConfig that computes what the authors' model computes, LoRA kept (if the checkpoint has any).

    Encoder: arrow attention, 128-token window, LogN on [CLS] with the authors' padded length
    (`logn_length="padded"`). Head: channels and biaffine size from U, R from down_fc, blocks from
    the `cross_layers.N` keys present, the authors' BiSPA alignment.
    """
    channels, p, p2 = _need(state, "U", 3)
    if p != p2:
        raise ValueError(f"key 'U' has shape {(channels, p, p2)}, expected (c, p, p)")
    num_types, _ = _need(state, "down_fc.weight", 2)
    blocks = _block_indices(state)
    encoder = dataclasses.replace(
        encoder_config,
        attention="arrow",
        window=AUTHORS_ENCODER_WINDOW,
        logn=True,
        logn_length="padded",
        lora_rank=_lora_rank(state),
        lora_alpha=float(lora_alpha),
    )
    head = SpanHeadConfig(
        num_types=int(num_types),
        max_span_words=int(head_window) + 1,
        biaffine_dim=int(p) - 1,
        channels=int(channels),
        num_blocks=len(blocks),
        use_bispa=bool(blocks),
        bispa_alignment="original",
    )
    return SenerConfig(encoder=encoder, head=head)


# ---------------------------------------------------------------------------------------------
# Key mapping
# ---------------------------------------------------------------------------------------------


def _module_key(path: tuple[str, ...]) -> str:
    """Hugging Face module name of an encoder module path (layer_3 -> layer.3, ...)."""
    return flax_path_to_hf_key(path + ("bias",))[0][: -len(".bias")]


def _encoder_key(path: tuple[str, ...], lora: bool) -> tuple[str, bool]:
    leaf, module = path[-1], path[:-1]
    if lora and module and module[-1] in LORA_PROJECTIONS:
        if leaf in LORA_SUFFIXES:  # lora_a (in, r) <- lora_A (r, in); lora_b (r, out) <- lora_B (out, r)
            return f"{ENCODER_PREFIX}{_module_key(module)}.{LORA_SUFFIXES[leaf]}", True
        key, transpose = flax_path_to_hf_key(module + ("base_layer", leaf))
        return ENCODER_PREFIX + key, transpose
    key, transpose = flax_path_to_hf_key(path)
    return ENCODER_PREFIX + key, transpose


def _head_key(path: tuple[str, ...]) -> tuple[str, bool]:
    top, leaf = path[0], path[-1]
    if len(path) == 1:  # U and W: same layout as ours
        return top, False
    if top in ("head_mlp", "tail_mlp"):
        module = f"{top}.1"  # nn.Sequential(Dropout, Linear, GELU): the Linear is entry 1
    elif top.startswith("cross_layers_"):
        module = f"cross_layers.{top[len('cross_layers_'):]}.{'.'.join(path[1:-1])}"
        if path[1] in ("conv1", "conv2"):
            return f"{module}.conv2d.weight", True
    else:
        module = ".".join(path[:-1])
    if leaf == "kernel":
        return f"{module}.weight", True
    if leaf in ("scale", "embedding"):
        return f"{module}.weight", False
    return f"{module}.{leaf}", False


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _as_encoder_config(encoder_config) -> EncoderConfig:
    if isinstance(encoder_config, EncoderConfig):
        return encoder_config
    if isinstance(encoder_config, Mapping):
        return EncoderConfig.from_hf_config(encoder_config)
    path = pathlib.Path(encoder_config)
    if path.is_dir() or path.is_file():
        return EncoderConfig.from_hf_config(path)
    # Deferred: optional, and only a hub name needs it (its config.json is all we need).
    from huggingface_hub import hf_hub_download

    return EncoderConfig.from_hf_config(pathlib.Path(hf_hub_download(str(encoder_config), "config.json")))


def load_authors_checkpoint(
    checkpoint: str | pathlib.Path | Mapping[str, np.ndarray],
    encoder_config: EncoderConfig | Mapping | str | pathlib.Path,
    labels: int | str | Sequence[str] | None = None,
    *,
    merge: bool = True,
    lora_alpha: float = AUTHORS_LORA_ALPHA,
    head_window: int = AUTHORS_HEAD_WINDOW,
) -> tuple[SenerConfig, dict]:
    """(SenerConfig, params {"encoder", "head"}) of an authors' SeNER checkpoint.

    checkpoint: a `.pth` (torch.save of the state dict; needs torch), a `.safetensors` file of the
        same dict, or the dict itself.
    encoder_config: the DeBERTa geometry (the checkpoint has none): an EncoderConfig, a Hugging Face
        config dict, a model directory / config.json, or a hub name such as microsoft/deberta-v3-large.
        Its dtype and attention_impl are kept; the attention settings become the authors'.
    labels: only checked here: a count, label names, or a dataset name must match down_fc's R
        (see `resolve_labels`, which gives the names).
    merge: fold LoRA into the kernels, base + (B @ A) * alpha / r (default); False keeps LoRA
        params (lora_a = A^T, lora_b = B^T) and returns a config with lora_rank = r.
    """
    state = read_authors_state(checkpoint) if not isinstance(checkpoint, Mapping) else dict(checkpoint)
    source = str(checkpoint) if not isinstance(checkpoint, Mapping) else "checkpoint"
    state = strip_wrapper_prefixes(state)
    config = authors_config(state, _as_encoder_config(encoder_config), lora_alpha=lora_alpha, head_window=head_window)
    resolve_labels(labels, config.head.num_types)

    scales = check_sinusoid_tables(state, config.head.num_blocks, config.head.channels, config.head.band_width)
    for key in scales:
        del state[key]
    fold_rope_scales(state, scales, config.head.channels)
    # assign_params turns a transposed key around with `.T`, which reverses all four axes of a conv
    # weight; swapping kh/kw first makes that the wanted (out, in, kh, kw) -> (kh, kw, in, out).
    for key in [k for k in state if k.endswith(".conv2d.weight") and np.ndim(state[k]) == 4]:
        state[key] = np.swapaxes(state[key], 2, 3)

    lora = config.encoder.lora_rank > 0
    expected = {
        path: tuple(leaf.shape)
        for path, leaf in traverse_util.flatten_dict(jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))).items()
    }

    def key_for(path: tuple[str, ...]) -> tuple[str, bool]:
        return _encoder_key(path[1:], lora) if path[0] == "encoder" else _head_key(path[1:])

    params = assign_params(
        expected, state, key_for, ignore=lambda name: name.startswith(ENCODER_PREFIX) and name[len(ENCODER_PREFIX):] in IGNORED_BUFFERS,
        source=source,
    )
    if merge and lora:
        encoder_params, encoder_config_merged = merge_lora(params["encoder"], config.encoder)
        params = {"encoder": encoder_params, "head": params["head"]}
        config = dataclasses.replace(config, encoder=encoder_config_merged)
    return config, params


# ---------------------------------------------------------------------------------------------
# Command line (reached through `python -m sener_jax.convert --authors ...`)
# ---------------------------------------------------------------------------------------------


def _labels_argument(text: str) -> int | str | list[str]:
    if text.isdigit():
        return int(text)
    if "," in text:
        return [part.strip() for part in text.split(",") if part.strip()]
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sener_jax.authors_checkpoint",
        description="Turn an authors' SeNER checkpoint (.pth or .safetensors) into a sener_jax export directory.",
    )
    parser.add_argument("--authors", required=True, help="the authors' checkpoint (.pth needs torch; .safetensors does not)")
    parser.add_argument("--encoder", required=True, help="DeBERTa config: Hugging Face name or directory (e.g. microsoft/deberta-v3-large)")
    parser.add_argument(
        "--labels", required=True,
        help=f"dataset name ({', '.join(sorted(AUTHORS_LABELS))}), comma-separated label names in row order, or a count",
    )
    parser.add_argument("--tokenizer", default=None, help="tokenizer name or directory (default: --encoder)")
    parser.add_argument("out_dir", help="export directory to write: new or empty (see --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it holds a sener_jax export")
    args = parser.parse_args(argv)
    check_target(args.out_dir, kind=EXPORT_KIND, overwrite=args.overwrite)  # before the slow conversion
    config, params = load_authors_checkpoint(args.authors, args.encoder, _labels_argument(args.labels))
    labels = resolve_labels(_labels_argument(args.labels), config.head.num_types)
    tokenizer = load_tokenizer(args.tokenizer or args.encoder)
    if tokenizer.vocab_size > config.encoder.vocab_size:
        raise ValueError(
            f"tokenizer has {tokenizer.vocab_size} ids but the encoder's vocab_size is {config.encoder.vocab_size}"
        )
    # The authors cut documents at 5120 tokens and decode at threshold 0.5: InferenceSettings' defaults.
    out = export_model(args.out_dir, config, params, tokenizer, labels, InferenceSettings(), overwrite=args.overwrite)
    count = sum(np.size(leaf) for leaf in jax.tree.leaves(params))
    print(f"wrote {out} ({count:,} parameters, {len(labels)} labels: {', '.join(labels)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
