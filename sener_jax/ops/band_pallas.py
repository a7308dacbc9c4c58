"""Banded attention as a flash-style Pallas kernel (forward and backward).

Computes exactly the contract of `band_reference.banded_attention_reference` (read its module
docstring): q, k, v (B, H, N, D); bias (B, H, N, 2w+1) in band layout (bias[..., i, d] belongs to
key j = i + d - w); key_mask (B, N) bool; an optional global key per row (logit global_logit
(B, H, N), value global_value (B, H, D)). Nothing is scaled here.

Forward: one program per (query block, batch, head). It loops only over the key blocks that
intersect the band [i - w, i + w] of its rows, keeps a running max / sum / accumulator (online
softmax, float32) and starts that state from the global key when there is one. The bias is passed
flat, (B, H, N * (2w+1)), where cell (i, j) sits at the affine address i * 2w + j + w (see
`_tile_geometry`): a tile's bias is a contiguous, unclipped read, and no dense bias ever exists.
Only the output and the per-row logsumexp are saved for the backward.

Backward (fully Pallas, flash-attention style, delta = rowsum(dO * O) computed in plain JAX):
- a dq kernel, one program per query block: recomputes the probabilities tile by tile from the
  saved logsumexp and produces dq, dbias in the same flat layout (masked affine stores of the
  in-band cells; the program also writes the zeros of band cells whose key is outside [0, N), so
  every dbias row is written whole by its own program), the global-logit gradient and per-query-
  block partial sums of the global-value gradient;
- a dkv kernel, one program per key block, looping over the query blocks whose band reaches it:
  dk and dv.
Each kernel has its own tiles and warps per GPU generation (`GPU_TILES`).
Memory is linear in N: nothing of size N x N or N x (block * #blocks) is materialised.

Shapes are padded outside the kernels (N up to a multiple of the block, D up to a power of two
>= 16, padded keys masked) so that every in-kernel tensor has power-of-two dims >= 16, as the
Pallas GPU (Triton) lowering requires. On CPU the kernels run in interpret mode.

Under a device mesh: the kernels see local shapes only, so call this function inside
`jax.shard_map` with the batch (or heads) sharded; see `shard_over_batch`.

Status: checked against the reference in interpret mode on CPU (tests/test_band_pallas.py);
lowered for CUDA without a GPU and its Triton IR compiled for sm_80 and sm_90 by the triton wheel
with no spills (tests/test_band_pallas_triton.py); not yet run on a GPU. `benchmarks/gpu_encoder.py` checks it against the reference on the device first.
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
class Tiles:
    """Tile and launch parameters of one kernel: block sizes (powers of two >= 16), Triton warps and
    software-pipelining stages (ignored in interpret mode)."""

    block_q: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 2


# Per GPU generation and kernel. Chosen from ptxas reports of the Triton IR at the production shape
# (B=1, H=16, N=4096 and 65,536, D=64, w=128, bf16 q/k/v, f32 bias; `benchmarks/pallas_triton_compile.py`):
# no spills and shared memory within the per-block limit on both targets. The backward kernels hold
# more live tiles (q, dO, k, v, p, dp, ds and their accumulators) than the forward, so they take a
# 32-wide side: dq 32 query rows against 64 keys (150-168 registers, was 243-255 with 64x64 and
# spilled on sm_80), dkv 32 keys against 64 query rows (183 registers on sm_80; 64 keys x 32 rows
# needed 243). 4 warps: 8 warps lowered dkv to 165 registers but halves the blocks per SM.
GPU_TILES = {
    "sm80": {"forward": Tiles(64, 64, 4, 2), "dq": Tiles(32, 64, 4, 2), "dkv": Tiles(64, 32, 4, 2)},
    "sm90": {"forward": Tiles(64, 64, 4, 2), "dq": Tiles(32, 64, 4, 2), "dkv": Tiles(64, 32, 4, 2)},
}
# Largest dynamic shared memory one block may opt into (CUDA programming guide, compute capabilities).
SHARED_MEMORY_LIMIT = {"sm80": 166_912, "sm90": 232_448}
_KERNELS = ("forward", "dq", "dkv")


@dataclasses.dataclass(frozen=True)
class _KernelConfig:
    """Static (hashable) configuration of the three kernels of one call."""

    window: int
    has_global: bool
    interpret: bool
    forward: Tiles
    dq: Tiles
    dkv: Tiles

    @property
    def n_multiple(self) -> int:
        """N is padded to a multiple of every block so that all kernels tile it exactly."""
        return max(max(t.block_q, t.block_k) for t in (self.forward, self.dq, self.dkv))


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


def shared_memory_estimate(kernel: str, tiles: Tiles, head_dim: int, qkv_bytes: int = 2) -> int:
    """Upper bound (bytes) of the shared memory Triton gives one kernel instance.

    Triton stages every dot operand in shared memory, once per pipeline stage for the operands
    loaded inside the loop, and uses shared memory for layout conversions of the float32 tiles
    (the bias / probability tiles and reductions). Counted per kernel, float32 tiles at 4 bytes:
      forward: stages * (k + v) + q + 2 f32 (bq, bk) tiles
      dq:      stages * (k + v) + q + dO + 3 f32 (bq, bk) tiles (bias, p, ds)
      dkv:     stages * (q + dO) + k + v + 3 f32 (bq, bk) tiles (bias, p^T, ds^T)
    It is checked against ptxas/Triton's report by tests/test_band_pallas_triton.py (estimate >=
    reported for the shipped tiles).
    """
    bq, bk, stages = tiles.block_q, tiles.block_k, max(tiles.num_stages, 1)
    tile32 = bq * bk * 4
    if kernel == "forward":
        return stages * 2 * bk * head_dim * qkv_bytes + bq * head_dim * qkv_bytes + 2 * tile32
    if kernel == "dq":
        return stages * 2 * bk * head_dim * qkv_bytes + 2 * bq * head_dim * qkv_bytes + 3 * tile32
    if kernel == "dkv":
        return stages * 2 * bq * head_dim * qkv_bytes + 2 * bk * head_dim * qkv_bytes + 3 * tile32
    raise ValueError(f"shared_memory_estimate: unknown kernel {kernel!r} (one of {_KERNELS})")


def _check_fits(target: str, kernel: str, tiles: Tiles, head_dim: int) -> None:
    """Refuse tiles whose shared memory cannot fit one block of the target GPU (before Triton does,
    with an out-of-resources error at launch time)."""
    need, limit = shared_memory_estimate(kernel, tiles, head_dim), SHARED_MEMORY_LIMIT[target]
    if need > limit:
        raise ValueError(
            f"banded_attention_pallas: {kernel} tiles {tiles.block_q}x{tiles.block_k} (stages={tiles.num_stages}, "
            f"head_dim={head_dim}) need about {need} bytes of shared memory, more than a {target} block may use "
            f"({limit}); use smaller block_q / block_k"
        )


def gpu_target_of_device() -> str:
    """'sm80' (A100 and other compute capability 8.x) or 'sm90' (H100/H200) for the default GPU;
    'sm90' (the newest tuned generation) when there is no GPU (deviceless lowering)."""
    try:
        device = jax.local_devices(backend="gpu")[0]
    except RuntimeError:
        return "sm90"
    major = str(getattr(device, "compute_capability", "9.0")).split(".")[0]
    return "sm80" if major == "8" else "sm90"


def _compiler_params(interpret: bool, tiles: Tiles):
    """GPU (Triton) compiler parameters; none in interpret mode (CPU), which must not see them."""
    if interpret:
        return None
    return plgpu.CompilerParams(num_warps=tiles.num_warps, num_stages=tiles.num_stages)


# ----------------------------------------------------------------------------------------------
# Tile helpers shared by the kernels
# ----------------------------------------------------------------------------------------------


def _tile_geometry(q_start, k_start, tiles: Tiles, window: int):
    """Flat band address of every (row, column) of a tile and its in-band flag.

    The bias (and dbias) is (B, H, N * (2w+1)): cell (i, j) has band offset d = j - i + w and flat
    address i * (2w+1) + d = i * 2w + j + w, affine in (row, column) with unit stride along the
    columns, so Triton sees contiguous addresses (vector loads/stores). For i, j in [0, N) the
    address is inside [0, N * (2w+1)) even out of the band (such cells alias a neighbouring row's
    cell; they are masked), so loads need neither a clip nor a mask.
    """
    rows = jnp.arange(tiles.block_q, dtype=jnp.int32)[:, None]
    cols = jnp.arange(tiles.block_k, dtype=jnp.int32)[None, :]
    address = (q_start * (2 * window) + k_start + window) + (rows * (2 * window) + cols)
    offset = (k_start - q_start + window) + cols - rows
    in_band = (offset >= 0) & (offset <= 2 * window)
    return address, in_band


def _spare_cells(cfg: _KernelConfig) -> int:
    """Extra dbias cells: one in interpret mode, none on the GPU.

    On the GPU a masked store never touches the address of a masked-out cell. Interpret mode
    emulates a masked store as a scatter of old-or-new values, where a masked cell aliasing an in-band
    cell of the same tile (possible when block_k > 2w) could write the old value back; there masked
    cells go to one spare cell after the band instead, dropped after the kernel.
    """
    return 1 if cfg.interpret else 0


def _store_address(address, in_band, n: int, cfg: _KernelConfig):
    if _spare_cells(cfg):
        return jnp.where(in_band, address, n * (2 * cfg.window + 1))
    return address


def _tile_logits(q, k, bias_ref, address, valid):
    """q k^T + band bias of one tile, in float32; invalid cells hold _NEG."""
    s = plgpu.dot(q, k, trans_b=True)
    bias = bias_ref[address].astype(jnp.float32)
    return jnp.where(valid, s + bias, _NEG)


def _floor_div(x, divisor: int, lower_bound: int):
    """floor(x / divisor) for x >= -lower_bound (lax.div truncates toward zero)."""
    shift = _round_up(max(lower_bound, 0), divisor)
    return lax.div(x + shift, divisor) - shift // divisor


def _band_key_blocks(q_start, tiles: Tiles, window: int, n_key_blocks: int):
    """[first, stop) key blocks touching the band of the query rows [q_start, q_start + bq), and the
    same range before clipping to [0, n_key_blocks) (it may start below 0 and end past the last)."""
    first = _floor_div(q_start - window, tiles.block_k, window)
    stop = lax.div(q_start + (tiles.block_q - 1 + window), tiles.block_k) + 1
    return lax.max(first, 0), lax.min(stop, n_key_blocks), first, stop


def _band_query_blocks(k_start, tiles: Tiles, window: int, n_query_blocks: int):
    """[first, last + 1) query blocks whose band reaches the keys [k_start, k_start + bk)."""
    first = lax.div(lax.max(k_start - window, 0), tiles.block_q)
    last = lax.div(k_start + (tiles.block_k - 1 + window), tiles.block_q)
    return first, lax.min(last + 1, n_query_blocks)


# ----------------------------------------------------------------------------------------------
# Forward kernel
# ----------------------------------------------------------------------------------------------


def _forward_kernel(q_ref, k_ref, v_ref, bias_ref, key_mask_ref, *refs, cfg: _KernelConfig, n_key_blocks: int):
    if cfg.has_global:
        global_logit_ref, global_value_ref, out_ref, lse_ref = refs
    else:
        out_ref, lse_ref = refs
    tiles = cfg.forward
    bq, bk = tiles.block_q, tiles.block_k
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
        address, in_band = _tile_geometry(q_start, k_start, tiles, cfg.window)
        valid = in_band & key_ok[None, :]
        s = _tile_logits(q, k, bias_ref, address, valid)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        correction = jnp.exp(m - m_new)
        p = jnp.where(valid, jnp.exp(s - m_new[:, None]), 0.0)
        l = l * correction + jnp.sum(p, axis=1)
        acc = acc * correction[:, None] + plgpu.dot(p.astype(v.dtype), v)
        return acc, m_new, l

    first, stop, _, _ = _band_key_blocks(q_start, tiles, cfg.window, n_key_blocks)
    acc, m, l = lax.fori_loop(first, stop, body, (acc, m, l))
    has_key = l > 0
    safe_l = jnp.where(has_key, l, 1.0)
    out_ref[...] = jnp.where(has_key[:, None], acc / safe_l[:, None], 0.0).astype(out_ref.dtype)
    # Rows without any valid key get lse 0: their recomputed probabilities are masked to 0 anyway.
    lse_ref[...] = jnp.where(has_key, m + jnp.log(safe_l), 0.0)


def _forward(cfg: _KernelConfig, q, k, v, bias, key_mask, global_logit, global_value):
    batch, heads, n, head_dim = q.shape
    bq = cfg.forward.block_q
    n_query_blocks, n_key_blocks = n // bq, n // cfg.forward.block_k
    grid = (n_query_blocks, batch, heads)
    q_block = pl.BlockSpec((None, None, bq, head_dim), lambda i, b, h: (b, h, i, 0))
    whole_seq = pl.BlockSpec((None, None, n, head_dim), lambda i, b, h: (b, h, 0, 0))
    in_specs = [
        q_block,
        whole_seq,
        whole_seq,
        pl.BlockSpec((None, None, bias.shape[-1]), lambda i, b, h: (b, h, 0)),
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
        compiler_params=_compiler_params(cfg.interpret, cfg.forward),
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
        global_logit_ref, global_value_ref, dq_ref, dbias_ref, dglobal_logit_ref, dglobal_value_ref = refs
    else:
        dq_ref, dbias_ref = refs
    tiles = cfg.dq
    bq, bk = tiles.block_q, tiles.block_k
    n = n_key_blocks * bk
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
        address, in_band = _tile_geometry(q_start, k_start, tiles, cfg.window)
        valid = in_band & key_ok[None, :]
        s = _tile_logits(q, k, bias_ref, address, valid)
        p = jnp.where(valid, jnp.exp(s - lse[:, None]), 0.0)
        dp = plgpu.dot(do, v, trans_b=True)
        ds = p * (dp - delta[:, None])
        # Each in-band cell of this query block belongs to exactly one key block: no write races.
        plgpu.store(dbias_ref.at[_store_address(address, in_band, n, cfg)], ds.astype(dbias_ref.dtype), mask=in_band)
        return dq + plgpu.dot(ds.astype(k.dtype), k)

    first, stop, band_first, band_stop = _band_key_blocks(q_start, tiles, cfg.window, n_key_blocks)
    dq = lax.fori_loop(first, stop, body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = dq.astype(dq_ref.dtype)

    # Band cells whose key lies outside [0, N) (rows within w of either end): zero, written here so
    # that every dbias row is written whole by its own program (no zero-filled buffer, no aliasing).
    def zero_body(kb, carry):
        address, in_band = _tile_geometry(q_start, kb * bk, tiles, cfg.window)
        zeros = jnp.zeros((bq, bk), dbias_ref.dtype)
        plgpu.store(dbias_ref.at[_store_address(address, in_band, n, cfg)], zeros, mask=in_band)
        return carry

    lax.fori_loop(band_first, lax.min(band_stop, 0), zero_body, 0)
    lax.fori_loop(lax.max(band_first, n_key_blocks), band_stop, zero_body, 0)

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
    tiles = cfg.dkv
    bq, bk = tiles.block_q, tiles.block_k
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
        address, in_band = _tile_geometry(q_start, k_start, tiles, cfg.window)
        valid = in_band & key_ok[None, :]
        s = _tile_logits(q, k, bias_ref, address, valid)
        p = jnp.where(valid, jnp.exp(s - lse[:, None]), 0.0)
        dv = dv + plgpu.dot(p.astype(do.dtype), do, trans_a=True)
        dp = plgpu.dot(do, v, trans_b=True)
        ds = p * (dp - delta[:, None])
        dk = dk + plgpu.dot(ds.astype(q.dtype), q, trans_a=True)
        return dk, dv

    first, stop = _band_query_blocks(k_start, tiles, cfg.window, n_query_blocks)
    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = lax.fori_loop(first, stop, body, (zeros, zeros))
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _backward(cfg: _KernelConfig, residuals, d_out):
    q, k, v, bias, key_mask, global_logit, global_value, out, lse = residuals
    batch, heads, n, head_dim = q.shape
    flat = bias.shape[-1]
    delta = jnp.sum(out.astype(jnp.float32) * d_out.astype(jnp.float32), axis=-1)
    whole_seq = pl.BlockSpec((None, None, n, head_dim), lambda i, b, h: (b, h, 0, 0))
    whole_mask = pl.BlockSpec((None, n), lambda i, b, h: (b, 0))
    whole_vector = pl.BlockSpec((None, None, n), lambda i, b, h: (b, h, 0))
    whole_bias = pl.BlockSpec((None, None, flat), lambda i, b, h: (b, h, 0))

    # dq, dbias (flat band layout), global gradients: one program per query block.
    bq = cfg.dq.block_q
    n_query_blocks = n // bq
    q_rows = pl.BlockSpec((None, None, bq, head_dim), lambda i, b, h: (b, h, i, 0))
    q_vector = pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, i))
    dbias_flat = flat + _spare_cells(cfg)
    in_specs = [q_rows, whole_seq, whole_seq, whole_bias, whole_mask, q_rows, q_vector, q_vector]
    args = [q, k, v, bias, key_mask, d_out, lse, delta]
    # Each program writes the whole band rows of its query block (in-band cells and the zeros of
    # keys outside [0, N)) into the (b, h) row of dbias: disjoint cells, no aliasing needed.
    out_specs = [q_rows, pl.BlockSpec((None, None, dbias_flat), lambda i, b, h: (b, h, 0))]
    out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((batch, heads, dbias_flat), bias.dtype)]
    if cfg.has_global:
        in_specs += [q_vector, pl.BlockSpec((None, None, head_dim), lambda i, b, h: (b, h, 0))]
        args += [global_logit, global_value]
        out_specs += [q_vector, pl.BlockSpec((None, None, None, head_dim), lambda i, b, h: (b, h, i, 0))]
        out_shape += [
            jax.ShapeDtypeStruct(global_logit.shape, global_logit.dtype),
            jax.ShapeDtypeStruct((batch, heads, n_query_blocks, head_dim), jnp.float32),
        ]
    dq_outputs = pl.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg, n_key_blocks=n // cfg.dq.block_k),
        grid=(n_query_blocks, batch, heads),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=_compiler_params(cfg.interpret, cfg.dq),
        interpret=cfg.interpret,
        name="banded_attention_dq",
    )(*args)
    if cfg.has_global:
        dq, dbias, dglobal_logit, dglobal_value_parts = dq_outputs
        dglobal_value = jnp.sum(dglobal_value_parts, axis=2).astype(global_value.dtype)
    else:
        dq, dbias = dq_outputs
        dglobal_logit = dglobal_value = None
    if dbias_flat != flat:
        dbias = dbias[..., :flat]

    # dk, dv: one program per key block.
    bk = cfg.dkv.block_k
    k_rows = pl.BlockSpec((None, None, bk, head_dim), lambda j, b, h: (b, h, j, 0))
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, cfg=cfg, n_query_blocks=n // cfg.dkv.block_q),
        grid=(n // bk, batch, heads),
        in_specs=[
            whole_seq,
            k_rows,
            k_rows,
            whole_bias,
            pl.BlockSpec((None, bk), lambda j, b, h: (b, j)),
            whole_seq,
            whole_vector,
            whole_vector,
        ],
        out_specs=[k_rows, k_rows],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=_compiler_params(cfg.interpret, cfg.dkv),
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
    gpu_target: str | None = None,
) -> jax.Array:
    """Banded attention (contract of `banded_attention_reference`) with the Pallas kernels.

    interpret=None runs the kernels in interpret mode when the default backend is CPU.
    block_q / block_k: query / key tile sizes of all three kernels (powers of two >= 16); by default
    each kernel takes its tiles from GPU_TILES[gpu_target] (capped for short inputs).
    gpu_target: "sm80" (A100) or "sm90" (H100/H200) for the tile table and the shared-memory check;
    default from the GPU present ("sm90" without one). Tiles a block of that GPU cannot hold are
    refused with a ValueError.
    Differentiable w.r.t. q, k, v, bias, global_logit and global_value (custom VJP, Pallas
    backward kernels, memory linear in N).
    """
    _validate(q, k, v, bias, key_mask, window, global_logit, global_value)
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    batch, heads, n, head_dim = q.shape
    for name, value in (("block_q", block_q), ("block_k", block_k)):
        if value is not None:
            _check_block(name, value)
    gpu_target = gpu_target or gpu_target_of_device()
    if gpu_target not in GPU_TILES:
        raise ValueError(f"banded_attention_pallas: gpu_target={gpu_target!r} must be one of {sorted(GPU_TILES)}")
    d_padded = max(_MIN_HEAD_DIM, _next_power_of_two(head_dim))
    cap = _default_block(n)
    kernel_tiles = {}
    for kernel, tiles in GPU_TILES[gpu_target].items():
        tiles = dataclasses.replace(
            tiles, block_q=block_q or min(tiles.block_q, cap), block_k=block_k or min(tiles.block_k, cap)
        )
        if not interpret:
            _check_fits(gpu_target, kernel, tiles, d_padded)
        kernel_tiles[kernel] = tiles
    cfg = _KernelConfig(window=window, has_global=global_logit is not None, interpret=bool(interpret), **kernel_tiles)

    n_padded = _round_up(max(n, 1), cfg.n_multiple)
    pad_n, pad_d = n_padded - n, d_padded - head_dim

    def pad_seq(x):
        return jnp.pad(x, [(0, 0), (0, 0), (0, pad_n), (0, pad_d)])

    q_p, k_p, v_p = pad_seq(q), pad_seq(k), pad_seq(v)
    # Flat band layout (a free reshape): see `_tile_geometry`.
    bias_p = jnp.pad(bias, [(0, 0), (0, 0), (0, pad_n), (0, 0)]).reshape(batch, heads, -1)
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
