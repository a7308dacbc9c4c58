"""DeBERTa's disentangled attention under the "full", "arrow" and "sliding" patterns.

Pure functions on per-head tensors; `deberta.py` owns the parameters. Per head, with
delta(i, j) = clamp(bucket(i - j) + S, 0, 2S - 1) (S = the relative-embedding span):

    a[i, j] = (q_i . k_j + q_i . Kr[delta(i, j)] + k_j . Qr[delta(i, j)]) / sqrt(D * scale_factor)

(Hugging Face writes the p2c index as -bucket(j - i) + S; the log bucket is odd, so it is the
same delta.) The c2p / p2c terms are present when "c2p" / "p2c" is in pos_att_type.

"reference" builds full N x N logits (as Hugging Face does) and masks them: the reference.
"xla" / "pallas" evaluate "arrow" and "sliding" through `banded_attention`: inside the band the
relative index depends only on the offset (2w + 1 distinct values), the [CLS] column and row
need one index per token, so nothing N x N is ever built. "full" is N x N by definition and is
computed densely whatever the impl.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from sener_jax.config_compat import REFERENCE
from sener_jax.ops.attention_probs import dropout_probs, masked_softmax
from sener_jax.ops.banded_attention import banded_attention

PATTERNS = ("full", "arrow", "sliding")
IMPLS = (REFERENCE, "xla", "pallas")
# How `band_bias` is built and kept (AttentionSettings.band_bias): "float32" stores the bias (and
# its gradient) in float32, the reference; "compute" stores it in the compute dtype of q (its
# einsums still accumulate in float32, so float32 runs are unchanged); "recompute" keeps only the
# projected relative tables and q / k for the backward pass and rebuilds the bias there.
BAND_BIAS_MODES = ("float32", "compute", "recompute", "compute+recompute")
LOGN_BASE = 512.0


@dataclasses.dataclass(frozen=True)
class RelativeGeometry:
    """How a relative distance i - j becomes a row of the relative-embedding table."""

    span: int  # S: the table has 2S rows
    position_buckets: int  # <= 0: no log buckets
    max_relative_positions: int


def log_bucket(relative: np.ndarray, bucket_size: int, max_position: int) -> np.ndarray:
    """transformers' make_log_bucket_position, replayed in float32 as torch computes it."""
    relative = np.asarray(relative, dtype=np.int64)
    sign = np.sign(relative)
    mid = bucket_size // 2
    abs_pos = np.where((relative < mid) & (relative > -mid), mid - 1, np.abs(relative))
    ratio = abs_pos.astype(np.float32) / np.float32(mid)
    log_pos = (
        np.ceil(np.log(ratio) / np.log(np.float32((max_position - 1) / mid)) * np.float32(mid - 1))
        + np.float32(mid)
    )
    return np.where(abs_pos <= mid, relative.astype(np.float32), log_pos * sign).astype(np.int64)


def relative_index(relative: np.ndarray, geometry: RelativeGeometry) -> np.ndarray:
    """Row of the relative table for distances i - j (host-side: shapes are static)."""
    relative = np.asarray(relative, dtype=np.int64)
    if geometry.position_buckets > 0 and geometry.max_relative_positions > 0:
        relative = log_bucket(relative, geometry.position_buckets, geometry.max_relative_positions)
    return np.clip(relative + geometry.span, 0, 2 * geometry.span - 1).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class AttentionSettings:
    pattern: str = "full"
    impl: str = "xla"
    window: int = 128
    logn: bool = True
    logn_length: str = "tokens"
    band_bias: str = "float32"  # one of BAND_BIAS_MODES
    dropout_rate: float = 0.0


def logn_factor(token_mask: jax.Array, logn_length: str) -> jax.Array:
    """(B,) log(n) / log(512) with n the non-padding tokens ("tokens") or, for "padded" (the
    authors' choice), the length of the batch's longest real sequence rounded up to a multiple of
    256. The authors pad each batch to its longest sequence and then to a multiple of 256; taking
    the longest *real* length (not the array length) keeps that value independent of our own,
    coarser length buckets, so an export reproduces their logits whatever bucket a segment lands in."""
    lengths = jnp.sum(token_mask.astype(jnp.int32), axis=-1)
    if logn_length == "tokens":
        n = jnp.maximum(lengths.astype(jnp.float32), 1.0)
    elif logn_length == "padded":
        longest = jnp.maximum(jnp.max(lengths), 1)
        n = jnp.full(token_mask.shape[:1], ((longest + 255) // 256) * 256).astype(jnp.float32)
    else:
        raise ValueError(f"logn_length must be 'tokens' or 'padded', got {logn_length!r}")
    return jnp.log(n) / math.log(LOGN_BASE)


def _einsum(spec: str, *operands) -> jax.Array:
    return jnp.einsum(spec, *operands, preferred_element_type=jnp.float32)


def pattern_mask(token_mask: jax.Array, pattern: str, window: int) -> jax.Array:
    """(B, N, N) bool: query i may attend key j. The dense definition of each pattern."""
    n = token_mask.shape[-1]
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    query = token_mask[:, :, None]
    key = token_mask[:, None, :]
    if pattern == "full":
        return query & key
    band = jnp.asarray(np.abs(i - j) <= window)
    if pattern == "sliding":
        return query & key & band
    if pattern == "arrow":
        # [CLS] (position 0) is the global token: its row sees every key, and every other
        # row sees it (whatever the distance) plus its own band of non-[CLS] keys.
        others = jnp.asarray(j == 0) | (key & band & jnp.asarray(j >= 1))
        return query & jnp.where(jnp.asarray(i == 0), key, others)
    raise ValueError(f"attention pattern must be one of {PATTERNS}, got {pattern!r}")


def dense_attention(q, k, v, pos_key, pos_query, token_mask, *, geometry, scale, settings, dropout_rng=None):
    """Full N x N logits + the pattern's mask: the reference for every pattern.

    q, k, v (B, H, N, D); pos_key / pos_query (H, 2S, D) or None; token_mask (B, N) bool.
    "full" keeps Hugging Face's masking exactly (a padding query row attends uniformly to all
    keys); "arrow" / "sliding" give zeros on padding query rows.
    """
    n = q.shape[-2]
    logits = _einsum("bhid,bhjd->bhij", q, k)
    index = relative_index(np.arange(n)[:, None] - np.arange(n)[None, :], geometry)
    if pos_key is not None:
        c2p = _einsum("bhid,hsd->bhis", q, pos_key)
        logits = logits + jnp.take_along_axis(c2p, jnp.broadcast_to(jnp.asarray(index), c2p.shape[:2] + (n, n)), axis=-1)
    if pos_query is not None:
        p2c = _einsum("bhjd,hsd->bhjs", k, pos_query)
        # p2c[j, delta(i, j)] gathered as [j, i], then transposed to [i, j].
        gathered = jnp.take_along_axis(p2c, jnp.broadcast_to(jnp.asarray(index.T), p2c.shape[:2] + (n, n)), axis=-1)
        logits = logits + jnp.swapaxes(gathered, -1, -2)
    logits = logits / scale
    allowed = pattern_mask(token_mask, settings.pattern, settings.window)[:, None]
    if settings.pattern == "arrow" and settings.logn:
        factor = logn_factor(token_mask, settings.logn_length)[:, None, None, None]
        logits = jnp.where(jnp.asarray(np.arange(n) == 0)[:, None], logits * factor, logits)
    # "full" keeps Hugging Face's masking (a row without any allowed key is uniform); the banded
    # patterns give zeros there, as `banded_attention` does.
    probs = masked_softmax(logits, allowed, fully_masked="uniform" if settings.pattern == "full" else "zeros")
    probs = dropout_probs(probs, settings.dropout_rate, dropout_rng)
    return _einsum("bhij,bhjd->bhid", probs.astype(v.dtype), v).astype(q.dtype)


def _skew_keys_to_queries(by_key: jax.Array, window: int) -> jax.Array:
    """(B, H, 2w+1, N) with [d, j] -> (B, H, N, 2w+1) with [i, d] = by_key[d, i + d - w] (0 off the ends).

    Pads and reshapes only (each row d shifted left by d), so the gradient is a reshape too.
    """
    lead = by_key.shape[:-2]
    rows, n = by_key.shape[-2:]
    width = n + 2 * window
    padded = jnp.pad(by_key, [(0, 0)] * len(lead) + [(0, 0), (window, window)])
    flat = jnp.pad(padded.reshape(lead + (rows * width,)), [(0, 0)] * len(lead) + [(0, rows)])
    shifted = flat.reshape(lead + (rows, width + 1))[..., :n]
    return jnp.swapaxes(shifted, -1, -2)


def band_bias(q, k, pos_key, pos_query, *, geometry, window, dtype=jnp.float32):
    """(B, H, N, 2w+1) relative terms (unscaled) at key i + d - w of query i, stored in `dtype`
    (each dot product accumulates in float32 whatever `dtype`)."""
    index = relative_index(window - np.arange(2 * window + 1), geometry)  # i - j = w - d
    batch, heads, n, _ = q.shape
    bias = jnp.zeros((batch, heads, n, 2 * window + 1), dtype)
    if pos_key is not None:
        bias = bias + jnp.einsum("bhid,hed->bhie", q, pos_key[:, index], preferred_element_type=dtype)
    if pos_query is not None:
        by_key = jnp.einsum("bhjd,hed->bhej", k, pos_query[:, index], preferred_element_type=dtype)
        bias = bias + _skew_keys_to_queries(by_key, window)
    return bias


def scaled_band_bias(q, k, pos_key, pos_query, *, geometry, window, scale, mode="float32"):
    """`band_bias` / scale, stored and differentiated as `mode` (one of BAND_BIAS_MODES) says."""
    if mode not in BAND_BIAS_MODES:
        raise ValueError(f"band_bias must be one of {BAND_BIAS_MODES}, got {mode!r}")

    dtype = q.dtype if "compute" in mode else jnp.float32

    def build(q, k, pos_key, pos_query):
        # In "compute" mode the c2p / p2c dots write `dtype` directly (float32 accumulation inside
        # the dot): no float32 (B, H, N, 2w+1) buffer is ever written.
        bias = band_bias(q, k, pos_key, pos_query, geometry=geometry, window=window, dtype=dtype)
        return (bias.astype(jnp.float32) / scale).astype(dtype)

    if "recompute" in mode:
        build = jax.checkpoint(build, policy=jax.checkpoint_policies.nothing_saveable)
    return build(q, k, pos_key, pos_query)


def cls_column_logits(q, k, pos_key, pos_query, *, geometry):
    """(B, H, N) unscaled logit of every query i towards key 0 ([CLS]), log-bucketed delta(i, 0)."""
    n = q.shape[-2]
    index = relative_index(np.arange(n), geometry)
    k0 = k[:, :, 0]
    logits = _einsum("bhid,bhd->bhi", q, k0)
    if pos_key is not None:
        logits = logits + _einsum("bhid,hid->bhi", q, pos_key[:, index])
    if pos_query is not None:
        logits = logits + _einsum("bhd,hsd->bhs", k0, pos_query)[..., index]
    return logits


def cls_row_logits(q, k, pos_key, pos_query, *, geometry):
    """(B, H, N) unscaled logit of query 0 ([CLS]) towards every key j, delta(0, j)."""
    n = q.shape[-2]
    index = relative_index(-np.arange(n), geometry)
    q0 = q[:, :, 0]
    logits = _einsum("bhd,bhjd->bhj", q0, k)
    if pos_key is not None:
        logits = logits + _einsum("bhd,hsd->bhs", q0, pos_key)[..., index]
    if pos_query is not None:
        logits = logits + _einsum("bhjd,hjd->bhj", k, pos_query[:, index])
    return logits


def banded_pattern_attention(q, k, v, pos_key, pos_query, token_mask, *, geometry, scale, settings, dropout_rng=None):
    """"arrow" / "sliding" in O(N * w) memory through `banded_attention`."""
    n = q.shape[-2]
    window = settings.window
    band_rng = cls_rng = None
    if dropout_rng is not None and settings.dropout_rate > 0.0:
        band_rng, cls_rng = jax.random.split(dropout_rng)
    bias = scaled_band_bias(q, k, pos_key, pos_query, geometry=geometry, window=window, scale=scale,
                            mode=settings.band_bias)
    q_scaled = (q.astype(jnp.float32) / scale).astype(q.dtype)
    options = dict(window=window, impl=settings.impl)
    if settings.dropout_rate > 0.0 and band_rng is not None:
        options.update(dropout_rate=settings.dropout_rate, dropout_rng=band_rng)
    if settings.pattern == "sliding":
        out = banded_attention(q_scaled, k, v, bias, token_mask, **options)
    elif settings.pattern == "arrow":
        global_logit = cls_column_logits(q, k, pos_key, pos_query, geometry=geometry) / scale
        key_mask = token_mask & jnp.asarray(np.arange(n) > 0)[None, :]
        out = banded_attention(
            q_scaled, k, v, bias, key_mask, global_logit=global_logit, global_value=v[:, :, 0], **options
        )
        row = cls_row_logits(q, k, pos_key, pos_query, geometry=geometry) / scale
        if settings.logn:
            row = row * logn_factor(token_mask, settings.logn_length)[:, None, None]
        probs = masked_softmax(row, token_mask[:, None, :], fully_masked="zeros")
        probs = dropout_probs(probs, settings.dropout_rate, cls_rng)
        cls_out = _einsum("bhj,bhjd->bhd", probs.astype(v.dtype), v).astype(out.dtype)
        out = jnp.where(jnp.asarray(np.arange(n) == 0)[:, None], cls_out[:, :, None, :], out)
    else:
        raise ValueError(f"banded attention supports 'arrow' and 'sliding', got {settings.pattern!r}")
    return jnp.where(token_mask[:, None, :, None], out, jnp.zeros((), out.dtype))


def disentangled_attention(q, k, v, pos_key, pos_query, token_mask, *, geometry, scale, settings, dropout_rng=None):
    """Context vectors (B, H, N, D) of the configured pattern and implementation."""
    if settings.pattern not in PATTERNS:
        raise ValueError(f"attention pattern must be one of {PATTERNS}, got {settings.pattern!r}")
    if settings.impl not in IMPLS:
        raise ValueError(f"attention_impl must be one of {IMPLS}, got {settings.impl!r}")
    kwargs = dict(geometry=geometry, scale=scale, settings=settings, dropout_rng=dropout_rng)
    if settings.pattern == "full" or settings.impl == REFERENCE:
        return dense_attention(q, k, v, pos_key, pos_query, token_mask, **kwargs)
    return banded_pattern_attention(q, k, v, pos_key, pos_query, token_mask, **kwargs)
