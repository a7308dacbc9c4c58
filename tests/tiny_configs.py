"""The one place for the tiny model geometries the tests build by hand.

Whole runs use the configs' own variants (`configs/<name>.py:tiny`, `configs.base.make_tiny`); model-level
tests that need an `EncoderConfig` or `SpanHeadConfig` without a run start from these and override
only what they test, so a change of a default shows up in one file.
"""
from __future__ import annotations

from sener_jax.models.deberta import EncoderConfig
from sener_jax.models.span_head import SpanHeadConfig

# One layer, two heads, 8 log buckets over 16 positions, no dropout: compiles in seconds and still
# takes every branch of the disentangled attention (c2p, p2c, log buckets).
_TINY_ENCODER = dict(
    vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
    position_buckets=8, max_relative_positions=16, attention="arrow", window=4,
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
)
# Width 24 with a 30-wide FFN: a geometry where hidden, head and FFN sizes all differ.
ODD_WIDTH = dict(vocab_size=61, hidden_size=24, intermediate_size=30)

_TINY_HEAD = dict(max_span_words=4, biaffine_dim=4, channels=4, num_blocks=1, mlp_dropout=0.0, bispa_dropout=0.0)


def tiny_encoder(**overrides) -> EncoderConfig:
    return EncoderConfig(**{**_TINY_ENCODER, **overrides})


def tiny_head(num_types: int = 2, **overrides) -> SpanHeadConfig:
    return SpanHeadConfig(num_types=num_types, **{**_TINY_HEAD, **overrides})
