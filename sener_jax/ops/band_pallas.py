"""Banded attention as a flash-style Pallas kernel (forward and backward).

Computes exactly the contract of `band_reference.banded_attention_reference` (read its module
docstring): q, k, v (B, H, N, D); bias (B, H, N, 2w+1) in band layout (bias[..., i, d] belongs to
key j = i + d - w); key_mask (B, N) bool; an optional global key per row (logit global_logit
(B, H, N), value global_value (B, H, D)). Nothing is scaled here.

Forward: one program per (query block, batch, head). It loops only over the key blocks that
intersect the band [i - w, i + w] of its rows, keeps a running max / sum / accumulator (online
softmax, float32) and starts that state from the global key when there is one. The band bias of a
(query block, key block) tile is gathered from the band layout by offset (d = j - i + w), so no
dense bias ever exists. Only the output and the per-row logsumexp are saved for the backward.

Backward (fully Pallas, flash-attention style, delta = rowsum(dO * O) computed in plain JAX):
- a dq kernel, one program per query block: recomputes the probabilities tile by tile from the
  saved logsumexp and produces dq, the band-layout dbias (scatter-stored by offset into a
  zero-initialised buffer aliased to the output, each cell written by exactly one tile), the
  global-logit gradient and per-query-block partial sums of the global-value gradient;
- a dkv kernel, one program per key block, looping over the query blocks whose band reaches it:
  dk and dv.
Memory is linear in N: nothing of size N x N or N x (block * #blocks) is materialised.

Shapes are padded outside the kernels (N up to a multiple of the block, D up to a power of two
>= 16, padded keys masked) so that every in-kernel tensor has power-of-two dims >= 16, as the
Pallas GPU (Triton) lowering requires. On CPU the kernels run in interpret mode.

Under a device mesh: the kernels see local shapes only, so call this function inside
`jax.shard_map` with the batch (or heads) sharded; see `shard_over_batch`.

Status: checked against the reference in interpret mode on CPU (tests/test_band_pallas.py) and
lowered to Triton IR for CUDA without a GPU (jax 0.10.2); not yet compiled by Triton nor run on a
GPU. `benchmarks/gpu_encoder.py` checks it against the reference on the device first.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

# Finite stand-in for -inf: keeps exp(m_old - m_new) and m - m finite for rows with no valid key.
_NEG = -1e30
_MIN_BLOCK = 16
_MIN_HEAD_DIM = 16


@dataclasses.dataclass(frozen=True)
class _KernelConfig:
    """Static (hashable) configuration of one kernel instantiation."""

    window: int
    block_q: int
    block_k: int
    has_global: bool
    interpret: bool


def _next_power_of_two(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def _default_block(n: int) -> int:
    # 64: for w = 128 a query block visits 5 key blocks (320 keys for a 257-wide band), and in
    # interpret mode it was the fastest tile on CPU; short inputs get the smallest tile that
    # covers them, never below the Triton minimum of 16.
    return max(_MIN_BLOCK, min(64, _next_power_of_two(max(n, 1))))


def _check_block(name: str, value: int) -> None:
    if value < _MIN_BLOCK or value & (value - 1):
        raise ValueError(f"banded_attention_pallas: {name}={value} must be a power of two >= {_MIN_BLOCK}")


def _compiler_params(interpret: bool, num_warps: int = 4, num_stages: int = 2):
    """GPU (Triton) compiler parameters; none in interpret mode (CPU), which must not see them."""
    if interpret:
        return None
    return plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages)


# ----------------------------------------------------------------------------------------------
# Tile helpers shared by the kernels
# ----------------------------------------------------------------------------------------------


def _tile_geometry(q_start, k_start, cfg: _KernelConfig):
    """Band offset d = j - i + w of every (row, column) of a tile, its in-band flag, row indices."""
    rows = jnp.broadcast_to(jnp.arange(cfg.block_q, dtype=jnp.int32)[:, None], (cfg.block_q, cfg.block_k))
    cols = jnp.broadcast_to(jnp.arange(cfg.block_k, dtype=jnp.int32)[None, :], (cfg.block_q, cfg.block_k))
    offset = (k_start - q_start + cfg.window) + cols - rows
    in_band = (offset >= 0) & (offset <= 2 * cfg.window)
    # Clipped so that every gather address is inside the band row, masked or not.
    offset = jnp.clip(offset, 0, 2 * cfg.window)
    return rows, offset, in_band


def _spare_columns(cfg: _KernelConfig) -> int:
    """Extra dbias columns: one in interpret mode, none on the GPU.

    On the GPU the masked scatter store never touches the address of a masked-out cell. Interpret
    mode emulates a masked store as a scatter of old-or-new values, where a masked cell sharing an
    address with a real cell (clipped offsets) could overwrite it; there masked cells go to a
    spare column 2w+1 instead, dropped after the kernel.
    """
    return 1 if cfg.interpret else 0


def _scatter_offset(offset, in_band, cfg: _KernelConfig):
    """dbias column of every tile cell (out-of-band cells: see `_spare_columns`)."""
    if _spare_columns(cfg):
        return jnp.where(in_band, offset, 2 * cfg.window + 1)
    return offset


def _tile_logits(q, k, bias_ref, bias_row0, rows, offset, valid):
    """q k^T + band bias of one tile, in float32; invalid cells hold _NEG."""
    s = plgpu.dot(q, k, trans_b=True)
    bias = bias_ref[bias_row0 + rows, offset].astype(jnp.float32)
    return jnp.where(valid, s + bias, _NEG)


def _band_key_blocks(q_start, cfg: _KernelConfig, n_key_blocks: int):
    """[first, last + 1) key blocks touching the band of the query rows [q_start, q_start + bq)."""
    first = lax.div(lax.max(q_start - cfg.window, 0), cfg.block_k)
    last = lax.div(q_start + (cfg.block_q - 1 + cfg.window), cfg.block_k)
    return first, lax.min(last + 1, n_key_blocks)


def _band_query_blocks(k_start, cfg: _KernelConfig, n_query_blocks: int):
    """[first, last + 1) query blocks whose band reaches the keys [k_start, k_start + bk)."""
    first = lax.div(lax.max(k_start - cfg.window, 0), cfg.block_q)
    last = lax.div(k_start + (cfg.block_k - 1 + cfg.window), cfg.block_q)
    return first, lax.min(last + 1, n_query_blocks)


# ----------------------------------------------------------------------------------------------
# Forward kernel
# ----------------------------------------------------------------------------------------------


def _forward_kernel(q_ref, k_ref, v_ref, bias_ref, key_mask_ref, *refs, cfg: _KernelConfig, n_key_blocks: int):
    if cfg.has_global:
        global_logit_ref, global_value_ref, out_ref, lse_ref = refs
    else:
        out_ref, lse_ref = refs
    bq, bk = cfg.block_q, cfg.block_k
    q_start = pl.program_id(0) * bq
    q = q_ref[...]
    head_dim = q.shape[-1]

    if cfg.has_global:
        # The global key is always valid: it seeds the online softmax with weight exp(0) = 1.
        m = global_logit_ref[...].astype(jnp.float32)
        l = jnp.ones((bq,), jnp.float32)
        acc = jnp.broadcast_to(global_value_ref[...].astype(jnp.float32)[None, :], (bq, head_dim))
    else:
        m = jnp.full((bq,), _NEG, jnp.float32)
        l = jnp.zeros((bq,), jnp.float32)
        acc = jnp.zeros((bq, head_dim), jnp.float32)

    def body(kb, carry):
        acc, m, l = carry
        k_start = kb * bk
        k = k_ref[pl.ds(k_start, bk), :]
        v = v_ref[pl.ds(k_start, bk), :]
        key_ok = key_mask_ref[pl.ds(k_start, bk)] > 0
        rows, offset, in_band = _tile_geometry(q_start, k_start, cfg)
        valid = in_band & key_ok[None, :]
        s = _tile_logits(q, k, bias_ref, 0, rows, offset, valid)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        correction = jnp.exp(m - m_new)
        p = jnp.where(valid, jnp.exp(s - m_new[:, None]), 0.0)
        l = l * correction + jnp.sum(p, axis=1)
        acc = acc * correction[:, None] + plgpu.dot(p.astype(v.dtype), v)
        return acc, m_new, l

    first, stop = _band_key_blocks(q_start, cfg, n_key_blocks)
    acc, m, l = lax.fori_loop(first, stop, body, (acc, m, l))
    has_key = l > 0
    safe_l = jnp.where(has_key, l, 1.0)
    out_ref[...] = jnp.where(has_key[:, None], acc / safe_l[:, None], 0.0).astype(out_ref.dtype)
    # Rows without any valid key get lse 0: their recomputed probabilities are masked to 0 anyway.
    lse_ref[...] = jnp.where(has_key, m + jnp.log(safe_l), 0.0)


def _forward(cfg: _KernelConfig, q, k, v, bias, key_mask, global_logit, global_value):
    batch, heads, n, head_dim = q.shape
    width = bias.shape[-1]
    bq = cfg.block_q
    n_query_blocks, n_key_blocks = n // bq, n // cfg.block_k
    grid = (n_query_blocks, batch, heads)
    q_block = pl.BlockSpec((None, None, bq, head_dim), lambda i, b, h: (b, h, i, 0))
    whole_seq = pl.BlockSpec((None, None, n, head_dim), lambda i, b, h: (b, h, 0, 0))
    in_specs = [
        q_block,
        whole_seq,
        whole_seq,
        pl.BlockSpec((None, None, bq, width), lambda i, b, h: (b, h, i, 0)),
        pl.BlockSpec((None, n), lambda i, b, h: (b, 0)),
    ]
    args = [q, k, v, bias, key_mask]
    if cfg.has_global:
        in_specs += [
            pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, i)),
            pl.BlockSpec((None, None, head_dim), lambda i, b, h: (b, h, 0)),
        ]
        args += [global_logit, global_value]
    out, lse = pl.pallas_call(
        functools.partial(_forward_kernel, cfg=cfg, n_key_blocks=n_key_blocks),
        grid=grid,
        in_specs=in_specs,
        out_specs=[q_block, pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, i))],
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct((batch, heads, n), jnp.float32),
        ],
        compiler_params=_compiler_params(cfg.interpret),
        interpret=cfg.interpret,
        name="banded_attention_forward",
    )(*args)
    return out, lse


# ----------------------------------------------------------------------------------------------
# Backward kernels
# ----------------------------------------------------------------------------------------------


def _dq_kernel(
    q_ref, k_ref, v_ref, bias_ref, key_mask_ref, do_ref, lse_ref, delta_ref, *refs, cfg: _KernelConfig, n_key_blocks: int
):
    if cfg.has_global:
        (global_logit_ref, global_value_ref, _dbias_in_ref, dq_ref, dbias_ref, dglobal_logit_ref,
         dglobal_value_ref) = refs
    else:
        _dbias_in_ref, dq_ref, dbias_ref = refs
    bq, bk = cfg.block_q, cfg.block_k
    q_start = pl.program_id(0) * bq
    q = q_ref[...]
    do = do_ref[...]
    lse = lse_ref[...]
    delta = delta_ref[...]

    def body(kb, dq):
        k_start = kb * bk
        k = k_ref[pl.ds(k_start, bk), :]
        v = v_ref[pl.ds(k_start, bk), :]
        key_ok = key_mask_ref[pl.ds(k_start, bk)] > 0
        rows, offset, in_band = _tile_geometry(q_start, k_start, cfg)
        valid = in_band & key_ok[None, :]
        s = _tile_logits(q, k, bias_ref, 0, rows, offset, valid)
        p = jnp.where(valid, jnp.exp(s - lse[:, None]), 0.0)
        dp = plgpu.dot(do, v, trans_b=True)
        ds = p * (dp - delta[:, None])
        # Each in-band cell of this query block belongs to exactly one key block: no write races.
        plgpu.store(dbias_ref.at[rows, _scatter_offset(offset, in_band, cfg)], ds.astype(dbias_ref.dtype), mask=in_band)
        return dq + plgpu.dot(ds.astype(k.dtype), k)

    first, stop = _band_key_blocks(q_start, cfg, n_key_blocks)
    dq = lax.fori_loop(first, stop, body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = dq.astype(dq_ref.dtype)

    if cfg.has_global:
        global_value = global_value_ref[...].astype(jnp.float32)
        do32 = do.astype(jnp.float32)
        p_global = jnp.exp(global_logit_ref[...].astype(jnp.float32) - lse)
        dp_global = jnp.sum(do32 * global_value[None, :], axis=1)
        dglobal_logit_ref[...] = (p_global * (dp_global - delta)).astype(dglobal_logit_ref.dtype)
        dglobal_value_ref[...] = jnp.sum(p_global[:, None] * do32, axis=0)


def _dkv_kernel(
    q_ref, k_ref, v_ref, bias_ref, key_mask_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *, cfg: _KernelConfig,
    n_query_blocks: int,
):
    bq, bk = cfg.block_q, cfg.block_k
    k_start = pl.program_id(0) * bk
    k = k_ref[...]
    v = v_ref[...]
    key_ok = key_mask_ref[...] > 0

    def body(qb, carry):
        dk, dv = carry
        q_start = qb * bq
        q = q_ref[pl.ds(q_start, bq), :]
        do = do_ref[pl.ds(q_start, bq), :]
        lse = lse_ref[pl.ds(q_start, bq)]
        delta = delta_ref[pl.ds(q_start, bq)]
        rows, offset, in_band = _tile_geometry(q_start, k_start, cfg)
        valid = in_band & key_ok[None, :]
        s = _tile_logits(q, k, bias_ref, q_start, rows, offset, valid)
        p = jnp.where(valid, jnp.exp(s - lse[:, None]), 0.0)
        dv = dv + plgpu.dot(p.astype(do.dtype), do, trans_a=True)
        dp = plgpu.dot(do, v, trans_b=True)
        ds = p * (dp - delta[:, None])
        dk = dk + plgpu.dot(ds.astype(q.dtype), q, trans_a=True)
        return dk, dv

    first, stop = _band_query_blocks(k_start, cfg, n_query_blocks)
    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = lax.fori_loop(first, stop, body, (zeros, zeros))
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _backward(cfg: _KernelConfig, residuals, d_out):
    q, k, v, bias, key_mask, global_logit, global_value, out, lse = residuals
    batch, heads, n, head_dim = q.shape
    width = bias.shape[-1]
    bq, bk = cfg.block_q, cfg.block_k
    n_query_blocks, n_key_blocks = n // bq, n // bk
    delta = jnp.sum(out.astype(jnp.float32) * d_out.astype(jnp.float32), axis=-1)

    q_rows = pl.BlockSpec((None, None, bq, head_dim), lambda i, b, h: (b, h, i, 0))
    whole_seq = pl.BlockSpec((None, None, n, head_dim), lambda i, b, h: (b, h, 0, 0))
    whole_mask = pl.BlockSpec((None, n), lambda i, b, h: (b, 0))
    q_vector = pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, i))
    whole_vector = pl.BlockSpec((None, None, n), lambda i, b, h: (b, h, 0))
    bias_rows = pl.BlockSpec((None, None, bq, width), lambda i, b, h: (b, h, i, 0))
    dbias_width = width + _spare_columns(cfg)
    dbias_rows = pl.BlockSpec((None, None, bq, dbias_width), lambda i, b, h: (b, h, i, 0))
    dbias_shape = (batch, heads, n, dbias_width)

    # dq, dbias (band layout), global gradients: one program per query block.
    in_specs = [q_rows, whole_seq, whole_seq, bias_rows, whole_mask, q_rows, q_vector, q_vector]
    args = [q, k, v, bias, key_mask, d_out, lse, delta]
    out_specs = [q_rows, dbias_rows]
    out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct(dbias_shape, bias.dtype)]
    if cfg.has_global:
        in_specs += [q_vector, pl.BlockSpec((None, None, head_dim), lambda i, b, h: (b, h, 0))]
        args += [global_logit, global_value]
        out_specs += [q_vector, pl.BlockSpec((None, None, None, head_dim), lambda i, b, h: (b, h, i, 0))]
        out_shape += [
            jax.ShapeDtypeStruct(global_logit.shape, global_logit.dtype),
            jax.ShapeDtypeStruct((batch, heads, n_query_blocks, head_dim), jnp.float32),
        ]
    # Band cells whose key lies outside [0, N) are never visited by a tile: they keep these zeros.
    dbias_index = len(args)
    in_specs.append(dbias_rows)
    args.append(jnp.zeros(dbias_shape, bias.dtype))
    dq_outputs = pl.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg, n_key_blocks=n_key_blocks),
        grid=(n_query_blocks, batch, heads),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        input_output_aliases={dbias_index: 1},
        compiler_params=_compiler_params(cfg.interpret),
        interpret=cfg.interpret,
        name="banded_attention_dq",
    )(*args)
    if cfg.has_global:
        dq, dbias, dglobal_logit, dglobal_value_parts = dq_outputs
        dglobal_value = jnp.sum(dglobal_value_parts, axis=2).astype(global_value.dtype)
    else:
        dq, dbias = dq_outputs
        dglobal_logit = dglobal_value = None
    if dbias_width != width:
        dbias = dbias[..., :width]

    # dk, dv: one program per key block.
    k_rows = pl.BlockSpec((None, None, bk, head_dim), lambda j, b, h: (b, h, j, 0))
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, cfg=cfg, n_query_blocks=n_query_blocks),
        grid=(n_key_blocks, batch, heads),
        in_specs=[
            whole_seq,
            k_rows,
            k_rows,
            pl.BlockSpec((None, None, n, width), lambda j, b, h: (b, h, 0, 0)),
            pl.BlockSpec((None, bk), lambda j, b, h: (b, j)),
            whole_seq,
            whole_vector,
            whole_vector,
        ],
        out_specs=[k_rows, k_rows],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=_compiler_params(cfg.interpret),
        interpret=cfg.interpret,
        name="banded_attention_dkv",
    )(q, k, v, bias, key_mask, d_out, lse, delta)
    return dq, dk, dv, dbias, jnp.zeros_like(key_mask), dglobal_logit, dglobal_value


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _banded_attention_padded(cfg, q, k, v, bias, key_mask, global_logit, global_value):
    return _forward(cfg, q, k, v, bias, key_mask, global_logit, global_value)[0]


def _banded_attention_padded_fwd(cfg, q, k, v, bias, key_mask, global_logit, global_value):
    out, lse = _forward(cfg, q, k, v, bias, key_mask, global_logit, global_value)
    return out, (q, k, v, bias, key_mask, global_logit, global_value, out, lse)


_banded_attention_padded.defvjp(_banded_attention_padded_fwd, _backward)


# ----------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------


def _validate(q, k, v, bias, key_mask, window, global_logit, global_value):
    where = "banded_attention_pallas"
    if q.ndim != 4:
        raise ValueError(f"{where}: q must be (B, H, N, D), got shape {q.shape}")
    batch, heads, n, head_dim = q.shape
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"{where}: k {k.shape} and v {v.shape} must match q {q.shape}")
    if not isinstance(window, int) or window < 0:
        raise ValueError(f"{where}: window must be a non-negative int, got {window!r}")
    if bias.shape != (batch, heads, n, 2 * window + 1):
        raise ValueError(f"{where}: bias must be {(batch, heads, n, 2 * window + 1)}, got {bias.shape}")
    if key_mask.shape != (batch, n):
        raise ValueError(f"{where}: key_mask must be {(batch, n)}, got {key_mask.shape}")
    if (global_logit is None) != (global_value is None):
        raise ValueError(f"{where}: give both global_logit and global_value, or neither")
    if global_logit is not None:
        if global_logit.shape != (batch, heads, n):
            raise ValueError(f"{where}: global_logit must be {(batch, heads, n)}, got {global_logit.shape}")
        if global_value.shape != (batch, heads, head_dim):
            raise ValueError(f"{where}: global_value must be {(batch, heads, head_dim)}, got {global_value.shape}")


def banded_attention_pallas(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array,
    key_mask: jax.Array,
    *,
    window: int,
    global_logit: jax.Array | None = None,
    global_value: jax.Array | None = None,
    interpret: bool | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
) -> jax.Array:
    """Banded attention (contract of `banded_attention_reference`) with the Pallas kernels.

    interpret=None runs the kernels in interpret mode when the default backend is CPU.
    block_q / block_k: query / key tile sizes (powers of two >= 16; default from N and window).
    Differentiable w.r.t. q, k, v, bias, global_logit and global_value (custom VJP, Pallas
    backward kernels, memory linear in N).
    """
    _validate(q, k, v, bias, key_mask, window, global_logit, global_value)
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    batch, heads, n, head_dim = q.shape
    block_q = block_q or _default_block(n)
    block_k = block_k or _default_block(n)
    _check_block("block_q", block_q)
    _check_block("block_k", block_k)
    cfg = _KernelConfig(
        window=window, block_q=block_q, block_k=block_k, has_global=global_logit is not None, interpret=bool(interpret)
    )

    n_padded = _round_up(max(n, 1), max(block_q, block_k))
    d_padded = max(_MIN_HEAD_DIM, _next_power_of_two(head_dim))
    pad_n, pad_d = n_padded - n, d_padded - head_dim

    def pad_seq(x):
        return jnp.pad(x, [(0, 0), (0, 0), (0, pad_n), (0, pad_d)])

    q_p, k_p, v_p = pad_seq(q), pad_seq(k), pad_seq(v)
    bias_p = jnp.pad(bias, [(0, 0), (0, 0), (0, pad_n), (0, 0)])
    # Padded keys are invalid; padded query rows are computed and thrown away.
    key_mask_p = jnp.pad(key_mask.astype(jnp.int32), [(0, 0), (0, pad_n)])
    global_logit_p = global_value_p = None
    if cfg.has_global:
        global_logit_p = jnp.pad(global_logit, [(0, 0), (0, 0), (0, pad_n)])
        global_value_p = jnp.pad(global_value, [(0, 0), (0, 0), (0, pad_d)])
    out = _banded_attention_padded(cfg, q_p, k_p, v_p, bias_p, key_mask_p, global_logit_p, global_value_p)
    return out[:, :, :n, :head_dim]


def shard_over_batch(fn, mesh: jax.sharding.Mesh, axis_name: str):
    """Wrap a banded-attention function so that it runs per device on a batch-sharded mesh axis.

    The Pallas kernels only ever see local (per-device) shapes; every argument's leading axis is
    the batch, which is split over `axis_name` (None arguments stay None).
    """
    from jax.sharding import PartitionSpec as P

    def wrapped(q, k, v, bias, key_mask, global_logit=None, global_value=None, **kwargs):
        def local(q, k, v, bias, key_mask, global_logit, global_value):
            return fn(q, k, v, bias, key_mask, global_logit=global_logit, global_value=global_value, **kwargs)

        args = (q, k, v, bias, key_mask, global_logit, global_value)
        specs = tuple(None if a is None else P(axis_name) for a in args)
        return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P(axis_name), check_vma=False)(*args)

    return wrapped
