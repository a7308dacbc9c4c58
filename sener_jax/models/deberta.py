"""DeBERTa-v2/v3 encoder in Flax Linen, numerically matching Hugging Face's DebertaV2Model.

Parameter names mirror the Hugging Face module tree (see the interfaces in the project brief):
embeddings/{word_embeddings,LayerNorm,...}, encoder/{rel_embeddings,LayerNorm,layer_<n>/...}.
The attention pattern ("full" | "arrow" | "sliding") and its implementation ("reference" | "xla" |
"pallas") come from the config; the math lives in `disentangled_attention`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sener_jax.config_compat import reference_impl
from sener_jax.models.disentangled_attention import (
    IMPLS,
    PATTERNS,
    AttentionSettings,
    RelativeGeometry,
    disentangled_attention,
)
from sener_jax.models.lora import LoraDense

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


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """DeBERTa-v2 fields (defaults: DeBERTa-v3-large) plus SeNER's attention settings."""

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
    attention: str = "full"
    attention_impl: str = "xla"
    window: int = 128
    logn: bool = True
    logn_length: str = "tokens"
    lora_rank: int = 0
    lora_alpha: float = 16.0
    dtype: str = "float32"
    remat: bool = False

    def __post_init__(self):
        object.__setattr__(self, "pos_att_type", _pos_att_tuple(self.pos_att_type))
        object.__setattr__(self, "attention_impl", reference_impl(self.attention_impl, "EncoderConfig.attention_impl"))
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

    def relative_geometry(self) -> RelativeGeometry:
        return RelativeGeometry(self.relative_span, self.position_buckets, self.resolved_max_relative_positions)

    def attention_settings(self, deterministic: bool) -> AttentionSettings:
        return AttentionSettings(
            pattern=self.attention,
            impl=self.attention_impl,
            window=self.window,
            logn=self.logn,
            logn_length=self.logn_length,
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


def _dense(features: int, dtype, name: str, use_bias: bool = True) -> nn.Dense:
    return nn.Dense(
        features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=nn.initializers.normal(0.02), name=name,
    )


def _layer_norm(config: EncoderConfig, name: str = "LayerNorm") -> nn.LayerNorm:
    # Two-pass variance in float32, as torch.nn.LayerNorm computes it.
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps, dtype=jnp.float32, param_dtype=jnp.float32,
        use_fast_variance=False, name=name,
    )


def _embed(rows: int, features: int, name: str) -> nn.Embed:
    return nn.Embed(rows, features, embedding_init=nn.initializers.normal(0.02), name=name)


class Embeddings(nn.Module):
    config: EncoderConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, input_ids: jax.Array, token_mask: jax.Array) -> jax.Array:
        c = self.config
        width = c.embedding_size or c.hidden_size
        x = _embed(c.vocab_size, width, "word_embeddings")(input_ids)
        if c.position_biased_input:
            n = input_ids.shape[1]
            if n > c.max_position_embeddings:
                raise ValueError(f"sequence length {n} exceeds max_position_embeddings={c.max_position_embeddings} (position_biased_input=True)")
            x = x + _embed(c.max_position_embeddings, width, "position_embeddings")(jnp.arange(n))[None]
        if c.type_vocab_size > 0:  # token type 0 everywhere, as Hugging Face without token_type_ids
            x = x + _embed(c.type_vocab_size, width, "token_type_embeddings")(jnp.zeros((1, 1), jnp.int32))
        if c.embedding_size is not None:
            x = _dense(c.hidden_size, jnp.float32, "embed_proj", use_bias=False)(x)
        x = _layer_norm(c)(x)
        x = x * token_mask[..., None].astype(x.dtype)
        return nn.Dropout(c.hidden_dropout_prob)(x, deterministic=self.deterministic)


class DenseResidualNorm(nn.Module):
    """dense -> dropout -> LayerNorm(. + residual): HF's SelfOutput and Output."""

    config: EncoderConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, residual: jax.Array) -> jax.Array:
        c = self.config
        y = _dense(c.hidden_size, c.compute_dtype, "dense")(x).astype(jnp.float32)
        y = nn.Dropout(c.hidden_dropout_prob)(y, deterministic=self.deterministic)
        return _layer_norm(c)(y + residual)


class Intermediate(nn.Module):
    config: EncoderConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        return ACTIVATIONS[c.hidden_act](_dense(c.intermediate_size, c.compute_dtype, "dense")(x))


class SelfAttention(nn.Module):
    config: EncoderConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, hidden: jax.Array, token_mask: jax.Array, rel_embeddings: jax.Array | None) -> jax.Array:
        c = self.config
        dtype = c.compute_dtype
        heads, head_dim = c.num_attention_heads, c.head_dim

        def lora(name):
            return LoraDense(c.hidden_size, rank=c.lora_rank, alpha=c.lora_alpha, dtype=dtype, name=name)

        query_proj, key_proj, value_proj = lora("query_proj"), _dense(c.hidden_size, dtype, "key_proj"), lora("value_proj")

        def split(x):  # (..., T, H*D) -> (..., H, T, D)
            return jnp.swapaxes(x.reshape(x.shape[:-1] + (heads, head_dim)), -2, -3)

        q, k, v = split(query_proj(hidden)), split(key_proj(hidden)), split(value_proj(hidden))
        pos_key = pos_query = None
        if c.relative_attention and c.pos_att_type:
            rel = nn.Dropout(c.hidden_dropout_prob)(rel_embeddings, deterministic=self.deterministic)
            if c.share_att_key:
                pos_key_proj, pos_query_proj = key_proj, query_proj
            else:
                pos_key_proj = _dense(c.hidden_size, dtype, "pos_key_proj") if "c2p" in c.pos_att_type else None
                pos_query_proj = _dense(c.hidden_size, dtype, "pos_query_proj") if "p2c" in c.pos_att_type else None
            if "c2p" in c.pos_att_type:
                pos_key = split(pos_key_proj(rel))
            if "p2c" in c.pos_att_type:
                pos_query = split(pos_query_proj(rel))
        settings = c.attention_settings(self.deterministic)
        rng = self.make_rng("dropout") if settings.dropout_rate > 0.0 else None
        context = disentangled_attention(
            q, k, v, pos_key, pos_query, token_mask,
            geometry=c.relative_geometry(), scale=math.sqrt(head_dim * c.scale_factor),
            settings=settings, dropout_rng=rng,
        )
        context = jnp.swapaxes(context, 1, 2)
        return context.reshape(context.shape[:2] + (heads * head_dim,))


class Attention(nn.Module):
    config: EncoderConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, hidden, token_mask, rel_embeddings):
        context = SelfAttention(self.config, self.deterministic, name="self")(hidden, token_mask, rel_embeddings)
        return DenseResidualNorm(self.config, self.deterministic, name="output")(context, hidden)


class Layer(nn.Module):
    config: EncoderConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, hidden, token_mask, rel_embeddings):
        attended = Attention(self.config, self.deterministic, name="attention")(hidden, token_mask, rel_embeddings)
        inner = Intermediate(self.config, name="intermediate")(attended)
        return DenseResidualNorm(self.config, self.deterministic, name="output")(inner, attended)


class Encoder(nn.Module):
    config: EncoderConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, hidden: jax.Array, token_mask: jax.Array) -> jax.Array:
        c = self.config
        rel = None
        if c.relative_attention:
            rel = _embed(2 * c.relative_span, c.hidden_size, "rel_embeddings")(jnp.arange(2 * c.relative_span))
            if c.layer_norm_rel_embeddings:
                rel = _layer_norm(c)(rel)
        layer_cls = nn.remat(Layer) if c.remat else Layer
        for index in range(c.num_hidden_layers):
            hidden = layer_cls(c, self.deterministic, name=f"layer_{index}")(hidden, token_mask, rel)
        return hidden


class DebertaEncoder(nn.Module):
    """input_ids (B, N) int, attention_mask (B, N) -> last hidden states (B, N, hidden) float32."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array, deterministic: bool = True) -> jax.Array:
        if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"input_ids and attention_mask must both be (B, N); got {input_ids.shape} and {attention_mask.shape}"
            )
        token_mask = attention_mask.astype(bool)
        hidden = Embeddings(self.config, deterministic, name="embeddings")(input_ids, token_mask)
        return Encoder(self.config, deterministic, name="encoder")(hidden, token_mask)


def init_encoder_params(config: EncoderConfig, rng: jax.Array, seq_len: int = 8) -> dict:
    """Random parameters (Hugging Face's init: normal(0.02) weights, zero biases, unit LayerNorm)."""
    ids = jnp.zeros((1, seq_len), jnp.int32)
    return DebertaEncoder(config).init(rng, ids, jnp.ones_like(ids))["params"]
