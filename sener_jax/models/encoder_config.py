"""The encoder's configuration: Hugging Face's DeBERTa-v2 geometry plus SeNER's settings.

`DebertaGeometry` holds the fields a Hugging Face config.json has (what the weights need);
`SenerSettings` holds SeNER's choices on top (attention pattern and implementation, LoRA, compute
dtype, rematerialisation, layer scan). `EncoderConfig` is both, flat (model.json, encoder_config.json
and the configs stay flat dicts); `SENER_FIELDS` / `GEOMETRY_FIELDS` are derived from the two
dataclasses, so no list of field names is kept by hand anywhere else.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from sener_jax.config_compat import reference_impl, remat_policy
from sener_jax.models.disentangled_attention import (
    BAND_BIAS_MODES, IMPLS, PATTERNS, AttentionSettings, RelativeGeometry,
)

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_python": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
REL_EMBEDDING_NORMS = ("none", "layer_norm")

# DebertaV2Config's defaults (and the getattr defaults of modeling_deberta_v2) for keys a
# config.json may leave out: a missing key must mean what it means to transformers.
HF_DEFAULTS = {
    "vocab_size": 128100,
    "hidden_size": 1536,
    "num_hidden_layers": 24,
    "num_attention_heads": 24,
    "intermediate_size": 6144,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "layer_norm_eps": 1e-7,
    "relative_attention": False,
    "max_relative_positions": -1,
    "position_buckets": -1,
    "pos_att_type": None,
    "share_att_key": False,
    "norm_rel_ebd": "none",
    "position_biased_input": True,
    "max_position_embeddings": 512,
    "type_vocab_size": 0,
    "pad_token_id": 0,
}


def _pos_att_tuple(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [part for part in value.lower().split("|")]
    return tuple(str(part).strip() for part in value if str(part).strip())


# Rematerialisation of each encoder layer in the backward pass: "none" keeps every activation;
# "layer" keeps only each layer's input (recomputes the layer); "save_dots_no_batch" also keeps
# the outputs of the weight matmuls (no batch dims: projections, FFN), recomputing the rest.
REMAT_POLICIES = {
    "none": None,
    "layer": jax.checkpoint_policies.nothing_saveable,
    "save_dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class DebertaGeometry:
    """DeBERTa-v2 fields of a Hugging Face config.json (defaults: DeBERTa-v3-large)."""

    vocab_size: int = 128100
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-7
    relative_attention: bool = True
    max_relative_positions: int = -1
    position_buckets: int = 256
    pos_att_type: tuple[str, ...] = ("p2c", "c2p")
    share_att_key: bool = True
    norm_rel_ebd: str = "layer_norm"
    position_biased_input: bool = False
    max_position_embeddings: int = 512
    type_vocab_size: int = 0
    pad_token_id: int | None = 0
    embedding_size: int | None = None  # None: hidden_size (no embed_proj)


@dataclasses.dataclass(frozen=True)
class SenerSettings:
    """SeNER's choices on top of the pretrained geometry (not in any Hugging Face config)."""

    attention: str = "full"
    attention_impl: str = "xla"
    window: int = 128
    logn: bool = True
    logn_length: str = "tokens"
    lora_rank: int = 0
    lora_alpha: float = 16.0
    dtype: str = "float32"
    remat: str = "none"  # a key of REMAT_POLICIES (True / False: the old spelling)
    scan_layers: bool = True  # False: the unrolled reference (one layer_<n> module per layer)
    # How the banded patterns build their (B, H, N, 2w+1) c2p + p2c bias: "float32" (the reference),
    # "compute" (stored in `dtype`, float32 accumulation), "recompute" (rebuilt in the backward pass),
    # or both ("compute+recompute"). All four are identical in float32 (tests/test_band_bias.py).
    # "recompute" is the default: 1-2% less compiled memory at 8k-16k tokens (benchmarks/RESULTS.md).
    band_bias: str = "recompute"


GEOMETRY_FIELDS = tuple(field.name for field in dataclasses.fields(DebertaGeometry))
SENER_FIELDS = tuple(field.name for field in dataclasses.fields(SenerSettings))


@dataclasses.dataclass(frozen=True)
class EncoderConfig(SenerSettings, DebertaGeometry):
    """DeBERTa-v2 geometry, then SeNER's settings, as one flat frozen dataclass."""

    def __post_init__(self):
        object.__setattr__(self, "pos_att_type", _pos_att_tuple(self.pos_att_type))
        object.__setattr__(self, "attention_impl", reference_impl(self.attention_impl, "EncoderConfig.attention_impl"))
        object.__setattr__(self, "remat", remat_policy(self.remat, "EncoderConfig.remat"))
        if self.embedding_size == self.hidden_size:
            object.__setattr__(self, "embedding_size", None)
        checks = [
            ("hidden_size", self.hidden_size > 0 and self.hidden_size % max(self.num_attention_heads, 1) == 0,
             f"a positive multiple of num_attention_heads={self.num_attention_heads}"),
            ("num_attention_heads", self.num_attention_heads > 0, "> 0"),
            ("num_hidden_layers", self.num_hidden_layers >= 0, ">= 0"),
            ("hidden_act", self.hidden_act in ACTIVATIONS, f"one of {sorted(ACTIVATIONS)}"),
            ("pos_att_type", set(self.pos_att_type) <= {"c2p", "p2c"}, "a subset of ['c2p', 'p2c']"),
            ("norm_rel_ebd", set(self._rel_norms()) <= set(REL_EMBEDDING_NORMS),
             f"'|'-separated items of {REL_EMBEDDING_NORMS}"),
            ("attention", self.attention in PATTERNS, f"one of {PATTERNS}"),
            ("attention_impl", self.attention_impl in IMPLS, f"one of {IMPLS}"),
            ("window", self.window >= 1, ">= 1"),
            ("logn_length", self.logn_length in ("tokens", "padded"), "'tokens' or 'padded'"),
            ("lora_rank", self.lora_rank >= 0, ">= 0"),
            ("dtype", self.dtype in DTYPES, f"one of {sorted(DTYPES)}"),
            ("remat", self.remat in REMAT_POLICIES, f"one of {sorted(REMAT_POLICIES)}"),
            ("band_bias", self.band_bias in BAND_BIAS_MODES, f"one of {list(BAND_BIAS_MODES)}"),
            ("max_position_embeddings", self.max_position_embeddings > 0, "> 0"),
            ("embedding_size", self.embedding_size is None or self.embedding_size > 0, "> 0"),
        ]
        if self.relative_attention:
            checks.append(("max_relative_positions", self.relative_span > 0,
                           "> 0 (or <= 0 with max_position_embeddings > 0)"))
        for field, ok, expected in checks:
            if not ok:
                raise ValueError(f"EncoderConfig.{field}={getattr(self, field)!r} is not supported: expected {expected}")

    def _rel_norms(self) -> list[str]:
        return [part.strip() for part in str(self.norm_rel_ebd).lower().split("|")]

    # Derived geometry (transformers resolves these the same way).
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def resolved_max_relative_positions(self) -> int:
        return self.max_relative_positions if self.max_relative_positions >= 1 else self.max_position_embeddings

    @property
    def relative_span(self) -> int:
        """S: the relative-embedding table has 2S rows."""
        return self.position_buckets if self.position_buckets > 0 else self.resolved_max_relative_positions

    @property
    def layer_norm_rel_embeddings(self) -> bool:
        return "layer_norm" in self._rel_norms()

    @property
    def scale_factor(self) -> int:
        return 1 + len(set(self.pos_att_type))

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def remat_policy(self):
        return REMAT_POLICIES[self.remat]

    def relative_geometry(self) -> RelativeGeometry:
        return RelativeGeometry(self.relative_span, self.position_buckets, self.resolved_max_relative_positions)

    def attention_settings(self, deterministic: bool) -> AttentionSettings:
        return AttentionSettings(
            pattern=self.attention,
            impl=self.attention_impl,
            window=self.window,
            logn=self.logn,
            logn_length=self.logn_length,
            band_bias=self.band_bias,
            dropout_rate=0.0 if deterministic else float(self.attention_probs_dropout_prob),
        )

    # Serialisation.
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["pos_att_type"] = list(self.pos_att_type)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "EncoderConfig":
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown EncoderConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**dict(values))

    @classmethod
    def from_hf_config(cls, source: Mapping[str, Any] | str | pathlib.Path, **overrides) -> "EncoderConfig":
        """Build from a Hugging Face DeBERTa-v2 config (dict, config.json path, or model directory).

        Keys a config leaves out take transformers' defaults. `overrides` set the SeNER fields
        (attention, window, lora_rank, ...). Settings this encoder does not implement raise
        ValueError naming the field.
        """
        origin = "config"
        if not isinstance(source, Mapping):
            path = pathlib.Path(source)
            if path.is_dir():
                path = path / "config.json"
            origin = str(path)
            try:
                source = json.loads(path.read_text())
            except FileNotFoundError as error:
                raise FileNotFoundError(f"no Hugging Face config at {path}") from error
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: not valid JSON ({error})") from error
        hf = dict(source)
        if hf.get("conv_kernel_size", 0) and int(hf["conv_kernel_size"]) > 0:
            raise ValueError(f"{origin}: conv_kernel_size={hf['conv_kernel_size']} is not supported (the convolution layer of some DeBERTa-v2 checkpoints); expected 0")
        heads = hf.get("num_attention_heads", HF_DEFAULTS["num_attention_heads"])
        hidden = hf.get("hidden_size", HF_DEFAULTS["hidden_size"])
        head_size = hf.get("attention_head_size")
        if head_size is not None and heads * int(head_size) != hidden:
            raise ValueError(f"{origin}: attention_head_size={head_size} is not supported: expected hidden_size / num_attention_heads = {hidden / heads}")
        values = {name: hf.get(name, default) for name, default in HF_DEFAULTS.items()}
        values["embedding_size"] = hf.get("embedding_size")
        values["pos_att_type"] = _pos_att_tuple(values["pos_att_type"])
        values.update(overrides)
        try:
            return cls.from_dict(values)
        except ValueError as error:
            raise ValueError(f"{origin}: {error}") from error
