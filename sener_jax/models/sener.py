"""SeNER: DeBERTa encoder -> max-pool subwords to words -> banded span head (SPEC sections 1-4).

Used functionally: params are a plain dict {"encoder": <DebertaEncoder params>, "head": <SpanHead
params>}. With `encoder.lora_rank > 0` the encoder's query/value projections carry LoRA matrices
under `.../query_proj/lora_a` etc. (see models/lora.py), which is how the optimizer finds them.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from sener_jax.config_compat import REFERENCE, reference_impl
from sener_jax.models.deberta import DebertaEncoder, EncoderConfig
from sener_jax.models.span_head import SpanHead, SpanHeadConfig

POOL_IMPLS = ("segment", REFERENCE)


@dataclasses.dataclass(frozen=True)
class SenerConfig:
    encoder: EncoderConfig
    head: SpanHeadConfig
    pool_impl: str = "segment"  # "segment" (scatter-max) | "reference" (the (B, L, N) twin)

    def __post_init__(self):
        object.__setattr__(self, "pool_impl", reference_impl(self.pool_impl, "SenerConfig.pool_impl"))
        if self.pool_impl not in POOL_IMPLS:
            raise ValueError(f"SenerConfig.pool_impl={self.pool_impl!r}: expected one of {POOL_IMPLS}")

    def to_dict(self) -> dict[str, Any]:
        return {"encoder": self.encoder.to_dict(), "head": self.head.to_dict(), "pool_impl": self.pool_impl}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SenerConfig":
        unknown = sorted(set(d) - {"encoder", "head", "pool_impl"})
        if unknown:
            raise ValueError(f"SenerConfig.from_dict: unknown field(s) {unknown}")
        return cls(
            encoder=EncoderConfig.from_dict(d["encoder"]),
            head=SpanHeadConfig.from_dict(d["head"]),
            pool_impl=d.get("pool_impl", "segment"),
        )


def pool_words_segment(token_states: jax.Array, word_index: jax.Array, num_words: int) -> jax.Array:
    """Max over each word's subword vectors by a scatter-max: O(B*N*d) memory.

    token_states (B, N, d); word_index (B, N) int, -1 for tokens that belong to no word.
    Returns (B, L, d); a word with no token gets a zero vector (SPEC section 2).
    """
    batch, n_tokens, dim = token_states.shape
    rows = jnp.arange(batch, dtype=jnp.int32)[:, None]
    # Tokens of no word go to one extra dump segment per batch that is dropped afterwards.
    segment = jnp.where(word_index >= 0, word_index, num_words) + rows * (num_words + 1)
    pooled = jax.ops.segment_max(
        token_states.reshape(batch * n_tokens, dim),
        segment.reshape(-1),
        num_segments=batch * (num_words + 1),
        indices_are_sorted=False,
    ).reshape(batch, num_words + 1, dim)[:, :num_words]
    has_token = jax.ops.segment_sum(
        jnp.ones((batch * n_tokens,), jnp.int32), segment.reshape(-1), num_segments=batch * (num_words + 1)
    ).reshape(batch, num_words + 1)[:, :num_words]
    return jnp.where(has_token[..., None] > 0, pooled, jnp.zeros((), pooled.dtype))


def pool_words_reference(token_states: jax.Array, word_index: jax.Array, num_words: int) -> jax.Array:
    """Reference: a (B, L, N) membership mask and a masked max over all tokens."""
    member = word_index[:, None, :] == jnp.arange(num_words)[None, :, None]  # (B, L, N)
    neg = jnp.finfo(token_states.dtype).min
    masked = jnp.where(member[..., None], token_states[:, None, :, :], neg)  # (B, L, N, d)
    pooled = masked.max(axis=2)
    return jnp.where(member.any(axis=2)[..., None], pooled, jnp.zeros((), pooled.dtype))


def pool_words(config: SenerConfig, token_states, word_index, num_words: int):
    impl = pool_words_segment if config.pool_impl == "segment" else pool_words_reference
    return impl(token_states, word_index, num_words)


def band_logits(
    config: SenerConfig,
    params: dict,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    word_index: jax.Array,
    word_mask: jax.Array,
    deterministic: bool = True,
    rngs: dict | None = None,
) -> jax.Array:
    """(B, N) tokens -> (B, L, 2w'+1, R) float32 band logits (invalid cells a large negative)."""
    if not deterministic and rngs is None:
        raise ValueError("band_logits: deterministic=False needs rngs={'dropout': key}")
    encoder_rngs = head_rngs = None
    if rngs is not None:
        encoder_key, head_key = jax.random.split(rngs["dropout"])
        encoder_rngs, head_rngs = {"dropout": encoder_key}, {"dropout": head_key}
    hidden = DebertaEncoder(config.encoder).apply(
        {"params": params["encoder"]}, input_ids, attention_mask, deterministic=deterministic, rngs=encoder_rngs
    )
    words = pool_words(config, hidden, word_index, word_mask.shape[1])
    # The head runs in float32: its sigmoid/BCE over ~257 cells per word is precision-sensitive.
    logits = SpanHead(config.head).apply(
        {"params": params["head"]}, words.astype(jnp.float32), word_mask, deterministic=deterministic, rngs=head_rngs
    )
    return logits.astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def init_params(config: SenerConfig, rng: jax.Array, num_tokens: int = 16, num_words: int = 8) -> dict:
    """Random parameters for the whole model (shapes do not depend on the example lengths).

    Jitted: tracing once is much faster than running Flax's init eagerly.
    """
    encoder_key, head_key = jax.random.split(rng)
    ids = jnp.zeros((1, num_tokens), jnp.int32)
    encoder = DebertaEncoder(config.encoder).init(encoder_key, ids, jnp.ones_like(ids), deterministic=True)
    head = SpanHead(config.head).init(
        head_key,
        jnp.zeros((1, num_words, config.encoder.hidden_size), jnp.float32),
        jnp.ones((1, num_words), bool),
        deterministic=True,
    )
    return {"encoder": encoder["params"], "head": head["params"]}
