"""SeNER span head: banded biaffine scores refined by BiSPA blocks (SPEC §3-4).

Input: word vectors (B, L, d) and a word mask (B, L). Output: logits (B, L, K, R) in band layout,
K = 2w'+1, where X[i, k] scores the span (i, j = i + k - w'); k < w' is the lower triangle
(start > end), k >= w' the diagonal and upper triangle. Invalid cells (j outside [0, L) or a
padding word at either end) hold `INVALID_LOGIT`.

Two implementations with the same parameter tree (`SpanHeadConfig.impl`):

- "band" (default): everything is computed directly on the (L, K) band; the per-row attention
  maps (K x K per row, ~1 GB per block and direction at L = 4096 in fp32) are only ever built for
  `row_chunk` rows at a time, inside `jax.checkpoint`, so forward + backward memory is O(L*K*c).
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
import numpy as np

from sener_jax.models.torch_init import (
    torch_conv_kernel_init,
    torch_linear_bias_init,
    torch_linear_kernel_init,
    torch_xavier_normal_init,
)
from sener_jax.band_layout import band_cell_mask, band_from_dense, dense_cell_mask, gather_band, transpose_band
from sener_jax.config_compat import REFERENCE, head_fields, reference_impl
from sener_jax.models.bispa_dropout import cell_dropout
from sener_jax.models.bispa_ops import (
    band_biaffine,
    band_row_attention,
    dense_band_conv,
    dense_row_attention,
)

# Logit written into invalid band cells: sigmoid gives exactly 0, and it is finite in bf16/fp32.
INVALID_LOGIT = -1e9
# LayerNorm epsilon inside BiSPA blocks (PyTorch default).
BISPA_LN_EPS = 1e-5

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
    row_chunk: int = 128  # band impl: rows whose K x K attention maps exist at one time
    remat_blocks: bool = True  # recompute each BiSPA block in the backward pass (saves only its input)

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
    """Holds a Linear's {kernel (in, out), bias (out,)} for code that applies it by hand (inside lax.map)."""

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


def _torch_dense(features_in: int, features_out: int, name: str) -> nn.Dense:
    """nn.Dense initialised like PyTorch's nn.Linear (the authors' head keeps its defaults)."""
    return nn.Dense(
        features_out, kernel_init=torch_linear_kernel_init(), bias_init=torch_linear_bias_init(features_in), name=name
    )


def _layer_norm(name: str) -> nn.LayerNorm:
    # use_fast_variance=False: the two-pass variance PyTorch uses (E[x^2]-E[x]^2 loses digits).
    return nn.LayerNorm(epsilon=BISPA_LN_EPS, use_fast_variance=False, name=name)


class BiSPABlock(nn.Module):
    """One BiSPA block (SPEC §4). Band impl: x is (B, L, K, c), mask (B, L, K). Dense impl: x is
    (B, L, L, c), mask (B, L, L)."""

    config: SpanHeadConfig

    @nn.compact
    def __call__(self, x, valid, deterministic: bool):
        cfg = self.config
        c, w = cfg.channels, cfg.band_half_width
        # The authors' CrossTransformer re-initialises nn.Embedding(2, c) with xavier_normal_ (gain 1).
        pos_embed = nn.Embed(2, c, embedding_init=torch_xavier_normal_init(), name="pos_embed")
        h_kernel, h_bias = _DenseParams(c, 3 * c, name="h_qkv")()
        v_kernel, v_bias = _DenseParams(c, 3 * c, name="v_qkv")()
        dense = _torch_dense(2 * c, c, "dense")
        ln1 = _layer_norm("LayerNorm")
        conv1 = _ConvKernel(c, name="conv1")()
        conv2 = _ConvKernel(c, name="conv2")()
        ln2 = _layer_norm("LayerNorm2")
        band = cfg.impl == "band"
        # Every mask is drawn in band layout (models/bispa_dropout.py) so band == reference in training.
        keys = [None] * 4
        if not deterministic and cfg.bispa_dropout > 0.0:
            keys = list(jax.random.split(self.make_rng("dropout"), 4))
        att_rate = cfg.bispa_dropout if cfg.bispa_attention_dropout else 0.0
        key_h, key_v = keys[:2]

        def drop(t, key):
            return cell_dropout(t, key, cfg.bispa_dropout, w, band)

        def mask(t):
            return jnp.where(valid[..., None], t, 0.0)

        x = mask(x)
        # 1. triangle embedding: row 0 for the lower triangle (k < w'), row 1 for diagonal-or-upper.
        if band:
            upper = np.arange(2 * w + 1) >= w  # (K,)
        else:
            idx = jnp.arange(x.shape[1])
            upper = idx[None, :] >= idx[:, None]  # (L, L): j >= i
        x = x + pos_embed(jnp.asarray(upper, jnp.int32))

        # 2-3. horizontal (along rows) and vertical (along columns) attention.
        if band:
            z_h = band_row_attention(x, valid, h_kernel, h_bias, cfg.row_chunk, key_h, att_rate)
            y = transpose_band(x, w)  # row i holds the spans that end at word i
            # mask is transpose-invariant
            z_v = band_row_attention(y, valid, v_kernel, v_bias, cfg.row_chunk, key_v, att_rate)
            if cfg.bispa_alignment == "plus":
                z_v = transpose_band(z_v, w)  # cell (i, j) gets column j's attention at (i, j)
        else:
            z_h = dense_row_attention(x, valid, h_kernel, h_bias, w, key_h, att_rate)
            # column attention: for fixed j over i. Result z_col[i, j] is cell (i, j) in column j.
            z_col = dense_row_attention(
                x.swapaxes(1, 2), valid.swapaxes(1, 2), v_kernel, v_bias, w, key_v, att_rate
            ).swapaxes(1, 2)
            # "original": cell (i, j) takes the column attention computed at (j, i) (same band index).
            z_v = z_col if cfg.bispa_alignment == "plus" else z_col.swapaxes(1, 2)

        # 4. merge the two directions, residual, LayerNorm.
        out = dense(jnp.concatenate([z_h, z_v], axis=-1))
        z = ln1(x + drop(out, keys[2]))

        # 5. local CNN on the band grid (zero padding), residual, LayerNorm.
        if band:
            conv = lambda t, k: jax.lax.conv_general_dilated(  # noqa: E731
                t, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        else:
            conv = lambda t, k: dense_band_conv(t, k, w)  # noqa: E731
        local = conv(mask(nn.gelu(conv(mask(z), conv1), approximate=False)), conv2)
        return ln2(z + drop(local, keys[3]))


class SpanHead(nn.Module):
    """Word vectors (B, L, d) + word mask (B, L) -> band logits (B, L, 2w'+1, R)."""

    config: SpanHeadConfig

    @nn.compact
    def __call__(self, word_states, word_mask, deterministic: bool = True):
        cfg = self.config
        c, w, p = cfg.channels, cfg.band_half_width, cfg.biaffine_dim + 1
        if word_states.ndim != 3 or word_mask.shape != word_states.shape[:2]:
            raise ValueError(
                f"SpanHead: expected word_states (B, L, d) and word_mask (B, L); "
                f"got {word_states.shape} and {word_mask.shape}"
            )
        word_mask = jnp.asarray(word_mask, bool)
        mlp_drop = nn.Dropout(cfg.mlp_dropout)

        def mlp(name):
            h = _torch_dense(word_states.shape[-1], cfg.biaffine_dim, name)(mlp_drop(word_states, deterministic=deterministic))
            h = nn.gelu(h, approximate=False)
            return jnp.concatenate([h, jnp.ones(h.shape[:-1] + (1,), h.dtype)], axis=-1)  # [h; 1]

        h_hat, t_hat = mlp("head_mlp"), mlp("tail_mlp")
        # torch xavier_normal_ over the whole tensors, as the authors: for U (c, p, p) PyTorch's fans are
        # p*p and c*p (std sqrt(2/(p^2 + c p)) = 0.0122 at c=32, p=101), not one slice's.
        u = self.param("U", torch_xavier_normal_init(), (c, p, p))
        w_lin = self.param("W", torch_xavier_normal_init(), (c, 2 * p))
        # Linear term as two per-word projections: W_o . [drop(h_i); drop(t_j)] = (W_h drop(h_i))_o + (W_t drop(t_j))_o.
        lin_h = mlp_drop(h_hat, deterministic=deterministic) @ w_lin[:, :p].T  # (B, L, c)
        lin_t = mlp_drop(t_hat, deterministic=deterministic) @ w_lin[:, p:].T

        blocks = [BiSPABlock(cfg, name=f"cross_layers_{n}") for n in range(cfg.num_blocks)] if cfg.use_bispa else []
        down_fc = _torch_dense(c, cfg.num_types, "down_fc")

        if cfg.impl == "band":
            valid = band_cell_mask(word_mask, w)
            x = band_biaffine(h_hat, t_hat, u, cfg.row_chunk, w) + lin_h[:, :, None] + gather_band(lin_t, w)
        else:
            valid = dense_cell_mask(word_mask, w)
            x = jnp.einsum("bip,opq,bjq->bijo", h_hat, u, t_hat) + lin_h[:, :, None] + lin_t[:, None, :]
        x = jnp.where(valid[..., None], x, 0.0)

        scores = x
        if blocks and cfg.remat_blocks and not self.is_initializing():
            scores = _scan_blocks(self, cfg, scores, valid, deterministic)
        else:
            for block in blocks:
                scores = block(scores, valid, deterministic)
        if blocks:
            scores = scores + x  # outer residual to the biaffine scores
        logits = down_fc(scores)
        if cfg.impl == REFERENCE:
            logits, valid = band_from_dense(logits, w), band_cell_mask(word_mask, w)
        return jnp.where(valid[..., None], logits, INVALID_LOGIT)


def _scan_blocks(head: nn.Module, cfg: SpanHeadConfig, scores, valid, deterministic: bool):
    """The BiSPA blocks as one rematerialised `lax.scan` over their (stacked) parameters.

    Only each block's input is saved for the backward pass. A loop, not unrolled `nn.remat`
    blocks: XLA:CPU schedules an unrolled block's recomputation early, so every block's
    intermediates were live at once (the head measured ~17 (L, K, c) tensors per block). The
    parameters keep their per-block names (`cross_layers_<n>`, the authors' layout); they are
    stacked here, per call (c-sized, negligible).
    """
    names = [f"cross_layers_{n}" for n in range(cfg.num_blocks)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[head.variables["params"][name] for name in names])
    keys = None
    if not deterministic and cfg.bispa_dropout > 0.0:
        keys = jax.random.split(head.make_rng("dropout"), cfg.num_blocks)

    @jax.checkpoint
    def block(carry, params, key):
        rngs = {"dropout": key} if key is not None else {}
        return BiSPABlock(cfg).apply({"params": params}, carry, valid, deterministic, rngs=rngs)

    def body(carry, xs):
        params, key = xs
        return block(carry, params, key), None

    scores, _ = jax.lax.scan(body, scores, (stacked, keys))
    return scores
