"""SeNER span head: banded biaffine scores refined by BiSPA blocks (SPEC §3-4).

Input: word vectors (B, L, d) and a word mask (B, L). Output: logits (B, L, K, R) in band layout,
K = 2w'+1, where X[i, k] scores the span (i, j = i + k - w'); k < w' is the lower triangle
(start > end), k >= w' the diagonal and upper triangle. Invalid cells (j outside [0, L) or a
padding word at either end) hold `INVALID_LOGIT`.

Two implementations with the same parameter tree (`SpanHeadConfig.impl`):

- "band" (default): everything is computed directly on the (L, K) band; the per-row attention
  maps (K x K per row, ~1 GB per block and direction at L = 4096 in fp32) are only ever built for
  `row_chunk` rows at a time (`bispa_ops.map_row_chunks`: recomputed per chunk in the backward pass,
  written in place), so forward + backward memory is O(L*K*c).
- "reference": the plain twin. Builds S (L, L, c) literally and does every step in (i, j)
  coordinates with masks (row attention over j, column attention over i, the sheared 3x3
  neighbourhood of the band convolution written in (i, j)), then reads the band out.
  O(L^2 c) memory and O(L^3 c) time: for tests and benchmarks only.

Parameter names follow the authors' PyTorch modules (so their checkpoints can be converted):
head_mlp, tail_mlp, U (c, 101, 101), W (c, 202), cross_layers_{n} {pos_embed, h_qkv, v_qkv,
dense, LayerNorm, conv1, conv2, LayerNorm2}, down_fc.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sener_jax.models.torch_init import (
    torch_conv_kernel_init,
    torch_linear_bias_init,
    torch_linear_kernel_init,
    torch_xavier_normal_init,
)
from sener_jax.band_layout import band_cell_mask, band_from_dense, dense_cell_mask, gather_band
from sener_jax.config_compat import REFERENCE, head_fields, reference_impl
from sener_jax.models.bispa_block import BISPA_LN_EPS, bispa_block  # noqa: F401  (BISPA_LN_EPS re-exported)
from sener_jax.models.bispa_ops import band_biaffine
from sener_jax.models.encoder_config import DTYPES

# Logit written into invalid band cells: sigmoid gives exactly 0, and it is finite in bf16/fp32.
INVALID_LOGIT = -1e9

_IMPLS = ("band", REFERENCE)
_ALIGNMENTS = ("original", "plus")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SpanHeadConfig:
    """Span head hyper-parameters. `num_types` (R) is required; everything else has SeNER's default."""

    num_types: int
    max_span_words: int = 129  # longest span scored, in words: |j - i| <= w' = max_span_words - 1
    biaffine_dim: int = 100
    channels: int = 32  # c
    num_blocks: int = 2
    impl: str = "band"  # "band" | "reference" (the literal (L, L) twin)
    bispa_alignment: str = "original"  # "original" | "plus" (SPEC §4.4)
    use_bispa: bool = True  # False: the paper's "w/o BiSPA" ablation
    mlp_dropout: float = 0.4
    bispa_dropout: float = 0.2
    # Dropout (p = bispa_dropout) on the softmax probabilities of both BiSPA attentions, as the authors.
    bispa_attention_dropout: bool = True
    # band impl: rows whose K x K attention maps (and merge / CNN intermediates) exist at one time. 32:
    # at 128 rows one chunk's maps are as large as a whole (L, K, c) tensor at L = 1,024.
    row_chunk: int = 32
    # Rematerialise the biaffine scores and each BiSPA block (as a scan, and inside the block its
    # three pieces) in the backward pass; False: the plain twin that saves every intermediate.
    remat_blocks: bool = True
    # Compute dtype of the head's matmuls/convs ("float32" | "bfloat16"); parameters stay float32,
    # LayerNorm statistics, attention softmax and the logits are float32 either way.
    dtype: str = "float32"

    def __post_init__(self):
        def check(ok: bool, field: str, expected: str):
            if not ok:
                raise ValueError(
                    f"SpanHeadConfig.{field}={getattr(self, field)!r}: expected {expected}"
                )

        check(isinstance(self.num_types, int) and self.num_types >= 1, "num_types", "an int >= 1")
        object.__setattr__(self, "impl", reference_impl(self.impl, "SpanHeadConfig.impl"))
        check(isinstance(self.max_span_words, int) and self.max_span_words >= 1, "max_span_words", "an int >= 1")
        check(isinstance(self.biaffine_dim, int) and self.biaffine_dim >= 1, "biaffine_dim", "an int >= 1")
        check(
            isinstance(self.channels, int) and self.channels >= 2 and self.channels % 2 == 0,
            "channels",
            "an even int >= 2 (RoPE rotates channel pairs)",
        )
        check(isinstance(self.num_blocks, int) and self.num_blocks >= 0, "num_blocks", "an int >= 0")
        check(self.impl in _IMPLS, "impl", f"one of {_IMPLS}")
        check(self.bispa_alignment in _ALIGNMENTS, "bispa_alignment", f"one of {_ALIGNMENTS}")
        check(isinstance(self.use_bispa, bool), "use_bispa", "a bool")
        check(0.0 <= self.mlp_dropout < 1.0, "mlp_dropout", "a float in [0, 1)")
        check(0.0 <= self.bispa_dropout < 1.0, "bispa_dropout", "a float in [0, 1)")
        check(isinstance(self.row_chunk, int) and self.row_chunk >= 1, "row_chunk", "an int >= 1")
        check(isinstance(self.remat_blocks, bool), "remat_blocks", "a bool")
        check(isinstance(self.bispa_attention_dropout, bool), "bispa_attention_dropout", "a bool")
        check(self.dtype in DTYPES, "dtype", f"one of {sorted(DTYPES)}")

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def band_half_width(self) -> int:
        """w': the band holds cells (i, j) with |j - i| <= w'."""
        return self.max_span_words - 1

    @property
    def band_width(self) -> int:
        """K = 2w' + 1."""
        return 2 * self.band_half_width + 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SpanHeadConfig":
        d = head_fields(d)  # old exports/configs: `window` -> max_span_words
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"SpanHeadConfig.from_dict: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


# --------------------------------------------------------------------------------------------
# Band impl helpers (the layout itself lives in sener_jax.band_layout).
# --------------------------------------------------------------------------------------------


class _DenseParams(nn.Module):
    """Holds a Linear's {kernel (in, out), bias (out,)} for code that applies it by hand (inside the row-chunk loops)."""

    features_in: int
    features_out: int

    @nn.compact
    def __call__(self):
        # PyTorch nn.Linear defaults, as the authors' h_qkv / v_qkv start.
        kernel = self.param("kernel", torch_linear_kernel_init(), (self.features_in, self.features_out))
        bias = self.param("bias", torch_linear_bias_init(self.features_in), (self.features_out,))
        return kernel, bias


class _ConvKernel(nn.Module):
    """Holds a bias-free 3x3 conv kernel (3, 3, c_in, c_out), Flax HWIO over (row i, band index k)."""

    channels: int

    @nn.compact
    def __call__(self):
        # PyTorch nn.Conv2d default (the authors' MaskConv2d keeps it).
        return self.param("kernel", torch_conv_kernel_init(), (3, 3, self.channels, self.channels))


def _torch_dense(features_in: int, features_out: int, name: str, dtype=jnp.float32) -> nn.Dense:
    """nn.Dense initialised like PyTorch's nn.Linear (the authors' head keeps its defaults); float32 params,
    computing in `dtype`."""
    return nn.Dense(
        features_out, kernel_init=torch_linear_kernel_init(), bias_init=torch_linear_bias_init(features_in),
        dtype=dtype, name=name,
    )


class _LayerNormParams(nn.Module):
    """Holds a LayerNorm's {scale, bias} (nn.LayerNorm's names and init); applied by bispa_block.layer_norm."""

    channels: int

    @nn.compact
    def __call__(self):
        return (self.param("scale", nn.initializers.ones, (self.channels,)),
                self.param("bias", nn.initializers.zeros, (self.channels,)))


class _EmbedParams(nn.Module):
    """Holds the triangle embedding table {embedding (2, c)} (nn.Embed's name)."""

    channels: int

    @nn.compact
    def __call__(self):
        # The authors' CrossTransformer re-initialises nn.Embedding(2, c) with xavier_normal_ (gain 1).
        return self.param("embedding", torch_xavier_normal_init(), (2, self.channels))


class BiSPABlock(nn.Module):
    """One BiSPA block (SPEC §4): owns the parameters, computes with `bispa_block.bispa_block`.
    Band impl: x is (B, L, K, c), mask (B, L, K). Dense impl: x is (B, L, L, c), mask (B, L, L).
    `keys`: the block's 4 dropout keys (None when deterministic), drawn by the head so that the
    scanned and the unrolled blocks use the same masks."""

    config: SpanHeadConfig

    @nn.compact
    def __call__(self, x, valid, keys=None):
        cfg = self.config
        c = cfg.channels
        _EmbedParams(c, name="pos_embed")()
        _DenseParams(c, 3 * c, name="h_qkv")()
        _DenseParams(c, 3 * c, name="v_qkv")()
        _DenseParams(2 * c, c, name="dense")()  # PyTorch nn.Linear init, as _torch_dense
        _LayerNormParams(c, name="LayerNorm")()
        _ConvKernel(c, name="conv1")()
        _ConvKernel(c, name="conv2")()
        _LayerNormParams(c, name="LayerNorm2")()
        return bispa_block(self.variables["params"], x, valid, _block_keys(keys), cfg, band=cfg.impl == "band",
                           remat=False, dtype=cfg.compute_dtype)


def _block_keys(key):
    """A block's dropout key -> its 4 keys (h attention, v attention, merge, CNN), or 4 Nones."""
    return [None] * 4 if key is None else list(jax.random.split(key, 4))


class SpanHead(nn.Module):
    """Word vectors (B, L, d) + word mask (B, L) -> band logits (B, L, 2w'+1, R), float32."""

    config: SpanHeadConfig

    @nn.compact
    def __call__(self, word_states, word_mask, deterministic: bool = True):
        cfg = self.config
        c, w, p, cd = cfg.channels, cfg.band_half_width, cfg.biaffine_dim + 1, cfg.compute_dtype
        if word_states.ndim != 3 or word_mask.shape != word_states.shape[:2]:
            raise ValueError(
                f"SpanHead: expected word_states (B, L, d) and word_mask (B, L); "
                f"got {word_states.shape} and {word_mask.shape}"
            )
        word_mask = jnp.asarray(word_mask, bool)
        mlp_drop = nn.Dropout(cfg.mlp_dropout)

        def mlp(name):
            h = _torch_dense(word_states.shape[-1], cfg.biaffine_dim, name, cd)(
                mlp_drop(word_states, deterministic=deterministic))
            h = nn.gelu(h, approximate=False)
            return jnp.concatenate([h, jnp.ones(h.shape[:-1] + (1,), h.dtype)], axis=-1)  # [h; 1]

        h_hat, t_hat = mlp("head_mlp"), mlp("tail_mlp")
        # torch xavier_normal_ over the whole tensors, as the authors: for U (c, p, p) PyTorch's fans are
        # p*p and c*p (std sqrt(2/(p^2 + c p)) = 0.0122 at c=32, p=101), not one slice's.
        u = self.param("U", torch_xavier_normal_init(), (c, p, p)).astype(cd)
        w_lin = self.param("W", torch_xavier_normal_init(), (c, 2 * p)).astype(cd)
        # Linear term as two per-word projections: W_o . [drop(h_i); drop(t_j)] = (W_h drop(h_i))_o + (W_t drop(t_j))_o.
        lin_h = mlp_drop(h_hat, deterministic=deterministic) @ w_lin[:, :p].T  # (B, L, c)
        lin_t = mlp_drop(t_hat, deterministic=deterministic) @ w_lin[:, p:].T

        blocks = [BiSPABlock(cfg, name=f"cross_layers_{n}") for n in range(cfg.num_blocks)] if cfg.use_bispa else []
        down_fc = _torch_dense(c, cfg.num_types, "down_fc")  # float32: the logits are float32

        if cfg.impl == "band":
            valid = band_cell_mask(word_mask, w)
        else:
            valid = dense_cell_mask(word_mask, w)
        x = _biaffine_scores(cfg, h_hat, t_hat, u, lin_h, lin_t, valid)

        keys = [None] * len(blocks)
        if blocks and not deterministic and cfg.bispa_dropout > 0.0:
            keys = list(jax.random.split(self.make_rng("dropout"), len(blocks)))
        scores = x
        if blocks and cfg.remat_blocks and not self.is_initializing():
            scores = _scan_blocks(self, cfg, scores, valid, keys)
        else:
            for block, key in zip(blocks, keys):
                scores = block(scores, valid, key)
        if blocks:
            scores = scores + x  # outer residual to the biaffine scores
        logits = down_fc(scores)
        if cfg.impl == REFERENCE:
            logits, valid = band_from_dense(logits, w), band_cell_mask(word_mask, w)
        return jnp.where(valid[..., None], logits, INVALID_LOGIT)


def _biaffine_scores(cfg: SpanHeadConfig, h_hat, t_hat, u, lin_h, lin_t, valid):
    """Biaffine scores h_i U t_j + W [h_i; t_j] on the band (or the dense (L, L) grid), zero on invalid cells.

    With `remat_blocks` the whole scorer is one checkpoint: its (L, K, c) intermediates (the band
    product, the gathered linear term, the sum) are recomputed in the backward pass, not saved.
    """
    w = cfg.band_half_width

    def scores(h_hat, t_hat, u, lin_h, lin_t):
        if cfg.impl == "band":
            x = band_biaffine(h_hat, t_hat, u, cfg.row_chunk, w) + lin_h[:, :, None] + gather_band(lin_t, w)
        else:
            x = jnp.einsum("bip,opq,bjq->bijo", h_hat, u, t_hat) + lin_h[:, :, None] + lin_t[:, None, :]
        return jnp.where(valid[..., None], x, jnp.zeros((), x.dtype))

    return (jax.checkpoint(scores) if cfg.remat_blocks else scores)(h_hat, t_hat, u, lin_h, lin_t)


def _scan_blocks(head: nn.Module, cfg: SpanHeadConfig, scores, valid, keys):
    """The BiSPA blocks as one rematerialised `lax.scan` over their (stacked) parameters.

    Only each block's input is saved for the backward pass; inside a block, `bispa_block(remat=True)`
    checkpoints its three pieces, so one piece's intermediates exist at a time. A loop, not
    unrolled `nn.remat` blocks: XLA:CPU schedules an unrolled block's recomputation early, so every
    block's intermediates were live at once (the head measured ~17 (L, K, c) tensors per block).
    The parameters keep their per-block names (`cross_layers_<n>`, the authors' layout); they are
    stacked here, per call (c-sized, negligible).
    """
    names = [f"cross_layers_{n}" for n in range(cfg.num_blocks)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[head.variables["params"][name] for name in names])
    stacked_keys = None if keys[0] is None else jnp.stack(keys)

    @jax.checkpoint
    def block(carry, params, key):
        return bispa_block(params, carry, valid, _block_keys(key), cfg, band=cfg.impl == "band", remat=True,
                           dtype=cfg.compute_dtype)

    def body(carry, xs):
        params, key = xs
        return block(carry, params, key), None

    scores, _ = jax.lax.scan(body, scores, (stacked, stacked_keys))
    return scores
