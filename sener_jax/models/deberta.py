"""DeBERTa-v2/v3 encoder in Flax Linen, numerically matching Hugging Face's DebertaV2Model.

Parameter names mirror the Hugging Face module tree (see the interfaces in the project brief):
embeddings/{word_embeddings,LayerNorm,...}, encoder/{rel_embeddings,LayerNorm,layer_<n>/...}.
The attention pattern ("full" | "arrow" | "sliding") and its implementation ("reference" | "xla" |
"pallas") come from the config; the math lives in `disentangled_attention`.
"""
from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from sener_jax.models.disentangled_attention import disentangled_attention
from sener_jax.models.encoder_config import (  # noqa: F401 (EncoderConfig & co. are imported from here too)
    ACTIVATIONS,
    DTYPES,
    GEOMETRY_FIELDS,
    HF_DEFAULTS,
    SENER_FIELDS,
    EncoderConfig,
)
from sener_jax.models.layer_stack import STACKED, layer_name
from sener_jax.models.lora import LoraDense

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
    scanned: bool = False  # under nn.scan: return (carry, None)

    @nn.compact
    def __call__(self, hidden, token_mask, rel_embeddings):
        attended = Attention(self.config, self.deterministic, name="attention")(hidden, token_mask, rel_embeddings)
        inner = Intermediate(self.config, name="intermediate")(attended)
        out = DenseResidualNorm(self.config, self.deterministic, name="output")(inner, attended)
        return (out, None) if self.scanned else out


def _layer_class(config: EncoderConfig, scanned: bool):
    if config.remat == "none":
        return Layer
    # Inside a scan the loop already keeps XLA from merging the forward and the recomputation,
    # so the CSE-preventing barrier is unneeded there (MaxText does the same).
    return nn.remat(Layer, policy=config.remat_policy, prevent_cse=not scanned)


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
        if not c.scan_layers:  # the unrolled reference: one module (and one compiled copy) per layer
            layer_cls = _layer_class(c, scanned=False)
            for index in range(c.num_hidden_layers):
                hidden = layer_cls(c, self.deterministic, name=layer_name(index))(hidden, token_mask, rel)
            return hidden
        if c.num_hidden_layers == 0:
            return hidden
        # One layer body compiled once and looped: compile time and program size do not grow with
        # depth; the parameters carry a leading layer axis (models/layer_stack.py).
        stack = nn.scan(
            _layer_class(c, scanned=True),
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast, nn.broadcast),
            length=c.num_hidden_layers,
        )
        hidden, _ = stack(c, self.deterministic, True, name=STACKED)(hidden, token_mask, rel)
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


@functools.partial(jax.jit, static_argnums=(0, 2))
def init_encoder_params(config: EncoderConfig, rng: jax.Array, seq_len: int = 8) -> dict:
    """Random parameters (Hugging Face's init: normal(0.02) weights, zero biases, unit LayerNorm).

    Jitted, like `sener.init_params`: Flax's init run eagerly dispatches (and compiles) op by op,
    ~3x slower for a tiny encoder on CPU.
    """
    ids = jnp.zeros((1, seq_len), jnp.int32)
    return DebertaEncoder(config).init(rng, ids, jnp.ones_like(ids))["params"]
