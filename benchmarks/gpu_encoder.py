"""Long-input encoder benchmark on one GPU: arrow attention, `attention_impl` "xla" vs "pallas".

DeBERTa-v3-large geometry (24 layers, hidden 1024, 16 heads, FFN 4096, vocab 128,100), random
weights, bf16 compute (params float32), batch 1, lengths 4k..64k tokens, one training-like step:
forward + backward with the base weights frozen and LoRA (rank 8) on query_proj / value_proj; the
gradient is taken w.r.t. the LoRA leaves only (so XLA drops the frozen weights' gradients). The
step runs with deterministic=True (no dropout) for both implementations.

Before the encoder table, a first child process (alone with --check-only) prints versions and
device, compiles the Pallas kernel (forward, forward+backward), checks it in bf16 against the XLA
path and the float32 reference (padding, an all-masked row, with and without the global key), and
only then times the banded attention alone (xla vs pallas, forward+backward; 16k tokens first); see
`run_kernel_check`.

Per (impl, length) row: compile time, step time (median of --steps timed steps after --warmup
steps), tokens/s, achieved TFLOP/s and peak device memory (`memory_stats()['peak_bytes_in_use']`
where the backend has it, and always XLA's compiled memory analysis). Each implementation runs
in its own child process, lengths ascending, so the peak of a row is not polluted by the other
implementation; a row that fails is recorded and the next row is tried (after an out-of-memory
row the longer lengths of that implementation are marked skipped unless --try-all). The
wall-clock budget (--budget-s) is split between the child processes; rows that would start after
their child's share are marked skipped, and the table file is rewritten after every child.

FLOPs counted (multiply-add = 2 FLOPs; N tokens, d hidden, F FFN width, w window, L layers):
  dense per layer forward   = 2 N (4 d^2 + 2 d F)                 (q, k, v, out projections, FFN)
  band per layer forward    = 2 N d (2 * (2w+2) + 2 * (2w+1))     (q.k and p.v over 2w+1 band keys
                              + the [CLS] key; c2p and p2c relative terms over the 2w+1 band)
  step = L * (2 * dense + 3 * band)
i.e. the backward counts input gradients only for the frozen projections (1x forward) and 2x
forward for the attention products. Not counted: the [CLS] row, LoRA, LayerNorm/softmax/GELU,
the relative-embedding projections, recomputation inside kernels or from remat. These are
"model FLOPs": achieved TFLOP/s = step FLOPs / step time.

Usage (repository root):
  python benchmarks/gpu_encoder.py                      # full table, writes $OUT/gpu_encoder.md if $OUT is set
  python benchmarks/gpu_encoder.py --layers 4 --lengths 4096 16384
  python benchmarks/gpu_encoder.py --quick              # tiny geometry, 2 lengths: checks the script on CPU
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
ROW_PREFIX = "GPU_ENCODER_ROW "
FULL_LENGTHS = (4096, 8192, 16384, 32768, 65536)
QUICK_LENGTHS = (64, 128)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny geometry and 2 short lengths (CPU smoke run)")
    parser.add_argument("--layers", type=int, default=None, help="number of encoder layers (default 24; quick 2)")
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="sequence lengths in tokens")
    parser.add_argument("--impls", nargs="+", default=["xla", "pallas"], choices=["xla", "pallas"])
    parser.add_argument("--window", type=int, default=None, help="one-sided window (default 128; quick 16)")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--remat", action="store_true", help="per-layer rematerialisation (EncoderConfig.remat)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=540.0,
                        help="total wall-clock budget, split evenly between the child processes; later rows are skipped")
    parser.add_argument("--try-all", action="store_true", help="after an OOM, still try the longer lengths")
    parser.add_argument("--out", default=None, help="markdown output path (default $OUT/gpu_encoder.md when $OUT is set)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl-child", choices=["xla", "pallas", "check"], help=argparse.SUPPRESS)
    parser.add_argument("--no-kernel-check", action="store_true",
                        help="skip the Pallas-vs-reference correctness check that runs before the table")
    parser.add_argument("--check-only", action="store_true",
                        help="only the kernel check child (versions, compile, bf16 correctness, kernel timings)")
    parser.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.layers is None:
        args.layers = 2 if args.quick else 24
    if args.lengths is None:
        args.lengths = list(QUICK_LENGTHS if args.quick else FULL_LENGTHS)
    if args.window is None:
        args.window = 16 if args.quick else 128
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    return args


def geometry(args) -> dict:
    """EncoderConfig fields of the benchmarked encoder (v3-large unless --quick)."""
    if args.quick:
        base = dict(vocab_size=1000, hidden_size=64, num_attention_heads=4, intermediate_size=128)
    else:
        base = dict(vocab_size=128100, hidden_size=1024, num_attention_heads=16, intermediate_size=4096)
    return dict(
        base,
        num_hidden_layers=args.layers,
        attention="arrow",
        window=args.window,
        lora_rank=args.lora_rank,
        dtype="bfloat16",
        remat=args.remat,
    )


def step_flops(n: int, layers: int, hidden: int, ffn: int, window: int) -> float:
    """Model FLOPs of one forward+backward step (formula in the module docstring)."""
    dense = 2 * n * (4 * hidden * hidden + 2 * hidden * ffn)
    band = 2 * n * hidden * (2 * (2 * window + 2) + 2 * (2 * window + 1))
    return float(layers * (2 * dense + 3 * band))


# ------------------------------------------------------------------------------------------
# Child: one implementation, all lengths, in this process
# ------------------------------------------------------------------------------------------


def _is_out_of_memory(error: BaseException) -> bool:
    text = f"{type(error).__name__}: {error}"
    return any(s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM"))


def _split_lora(params):
    """(lora leaves, frozen leaves) as flat {path: array} dicts."""
    from flax import traverse_util

    flat = traverse_util.flatten_dict(params)
    lora = {path: value for path, value in flat.items() if path[-1] in ("lora_a", "lora_b")}
    frozen = {path: value for path, value in flat.items() if path not in lora}
    return lora, frozen


def run_child(args, impl: str) -> None:
    import jax
    import jax.numpy as jnp
    from flax import traverse_util

    from sener_jax.models.deberta import DebertaEncoder, EncoderConfig

    config = EncoderConfig(**geometry(args), attention_impl=impl)
    device = jax.devices()[0]
    model = DebertaEncoder(config)
    init_ids = jnp.zeros((1, 8), jnp.int32)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), init_ids, jnp.ones_like(init_ids))["params"]
    lora, frozen = _split_lora(params)
    if not lora:
        raise SystemExit("no LoRA leaves found: is lora_rank > 0 supported by DebertaEncoder?")
    # A fresh adapter has lora_b = 0; give it small random values so the step is not degenerate.
    lora = {
        path: (value if path[-1] == "lora_a" else 0.01 * jax.random.normal(jax.random.PRNGKey(1), value.shape))
        for path, value in lora.items()
    }

    def loss_fn(lora, frozen, input_ids, attention_mask):
        tree = traverse_util.unflatten_dict({**frozen, **lora})
        hidden = model.apply({"params": tree}, input_ids, attention_mask, deterministic=True)
        return jnp.mean(jnp.square(hidden.astype(jnp.float32)))

    step = jax.jit(jax.grad(loss_fn))
    out_of_memory_at = None
    for n in sorted(args.lengths):
        row = dict(kind="encoder", impl=impl, tokens=n, layers=config.num_hidden_layers, remat=config.remat,
                   device=str(device.device_kind))
        skip = None
        if args.deadline is not None and time.time() > args.deadline:
            skip = "skipped (time budget)"
        elif out_of_memory_at is not None and not args.try_all:
            skip = f"skipped (OOM at {out_of_memory_at})"
        if skip:
            row["status"] = skip
            print(ROW_PREFIX + json.dumps(row), flush=True)
            continue
        try:
            ids = jax.random.randint(jax.random.PRNGKey(n), (1, n), 1, config.vocab_size, jnp.int32)
            mask = jnp.ones((1, n), jnp.int32)
            start = time.perf_counter()
            compiled = step.lower(lora, frozen, ids, mask).compile()
            row["compile_s"] = time.perf_counter() - start
            analysis = compiled.memory_analysis()
            if analysis is not None:
                row["compiled_temp_bytes"] = int(analysis.temp_size_in_bytes)
                row["compiled_total_bytes"] = int(
                    analysis.temp_size_in_bytes + analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                )
            for _ in range(args.warmup):
                jax.block_until_ready(compiled(lora, frozen, ids, mask))
            times = []
            for _ in range(args.steps):
                start = time.perf_counter()
                grads = jax.block_until_ready(compiled(lora, frozen, ids, mask))
                times.append(time.perf_counter() - start)
            finite = all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
            median = statistics.median(times)
            flops = step_flops(n, config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.window)
            row.update(
                status="ok" if finite else "ok (non-finite grads!)",
                step_s=median,
                tokens_per_s=n / median,
                tflops=flops / median / 1e12,
                step_tflop=flops / 1e12,
            )
            stats = device.memory_stats() if hasattr(device, "memory_stats") else None
            if stats and "peak_bytes_in_use" in stats:
                row["peak_bytes"] = int(stats["peak_bytes_in_use"])
            del compiled, grads
        except Exception as error:  # one failing row must not end the table
            if _is_out_of_memory(error):
                row["status"] = "OOM"
                out_of_memory_at = n
            else:
                row["status"] = f"error: {type(error).__name__}: {str(error)[:300]}"
        print(ROW_PREFIX + json.dumps(row), flush=True)


def _emit(text: str) -> None:
    """Print one line and append it to $OUT/gpu_kernel_check.log at once: a run cut short keeps it."""
    print(text, flush=True)
    if os.environ.get("OUT"):
        os.makedirs(os.environ["OUT"], exist_ok=True)
        with open(os.path.join(os.environ["OUT"], "gpu_kernel_check.log"), "a") as log:
            log.write(text + "\n")
            log.flush()


def _emit_row(row: dict) -> None:
    _emit(ROW_PREFIX + json.dumps(row))


def run_kernel_check(args) -> None:
    """The Pallas kernel on this device, cheapest and most informative first.

    1. versions and device;
    2. compile only (no run): forward and forward+backward at the production shape (B=1, 16 heads,
       N=4096, D=64, bf16 q/k/v, f32 bias, global key); a failure prints its full traceback;
    3. bf16 correctness at N=1000 (not a tile multiple; 200 with --quick), batch 2 (row 0 right-
       padded, row 1 all masked), with and without the global key: pallas against the XLA path and
       the float32 reference (max error relative to the reference's max magnitude, <= 3e-2), and
       dbias exactly 0 on band cells whose key is outside [0, N) or masked;
    4. forward+backward time of the banded attention alone, xla vs pallas: 16,384 tokens first,
       then the other lengths ascending ("kernel" lines).
    Every line goes to stdout and $OUT/gpu_kernel_check.log as soon as it is produced.
    """
    import traceback

    import jax
    import jax.numpy as jnp
    import numpy as np

    from sener_jax.ops.band_pallas import banded_attention_pallas
    from sener_jax.ops.band_reference import banded_attention_reference
    from sener_jax.ops.band_xla import banded_attention_xla

    device_kind = str(jax.devices()[0].device_kind)
    window = args.window
    _emit(f"versions: python {sys.version.split()[0]} jax {jax.__version__} jaxlib "
          f"{getattr(jax.lib, '__version__', '?')} devices {jax.devices()} kind {device_kind}")

    def inputs(batch, heads, n, head_dim, with_global, lengths=None):
        keys = jax.random.split(jax.random.PRNGKey(n), 8)
        q, k, v = (jax.random.normal(keys[i], (batch, heads, n, head_dim)) for i in range(3))
        q = q * (3 * head_dim) ** -0.5  # pre-scaled, as the encoder passes it
        bias = 0.5 * jax.random.normal(keys[3], (batch, heads, n, 2 * window + 1))
        lengths = jnp.array(lengths if lengths is not None else [n] * batch)
        key_mask = jnp.arange(n)[None, :] < lengths[:, None]
        q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
        if not with_global:
            return q, k, v, bias, key_mask, None, None
        global_logit = jax.random.normal(keys[4], (batch, heads, n))
        global_value = jax.random.normal(keys[5], (batch, heads, head_dim)).astype(jnp.bfloat16)
        return q, k, v, bias, key_mask, global_logit, global_value

    def grad_fn(attention, with_global=True):
        def loss(q, k, v, bias, key_mask, global_logit, global_value):
            out = attention(q, k, v, bias, key_mask, window=window, global_logit=global_logit, global_value=global_value)
            weights = jnp.cos(jnp.arange(out.size, dtype=jnp.float32).reshape(out.shape))
            return jnp.sum(out.astype(jnp.float32) * weights), out

        return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 5, 6) if with_global else (0, 1, 2, 3), has_aux=True))

    # 2. compile only
    heads = 4 if args.quick else 16
    n_compile = 256 if args.quick else 4096
    production = inputs(1, heads, n_compile, 64, with_global=True)
    forward = jax.jit(lambda *a: banded_attention_pallas(*a[:5], window=window, global_logit=a[5], global_value=a[6]))
    for label, fn in (("forward", forward), ("forward+backward", grad_fn(banded_attention_pallas))):
        row = {"kind": "compile", "what": label, "tokens": n_compile, "heads": heads, "device": device_kind}
        try:
            start = time.perf_counter()
            fn.lower(*production).compile()
            row.update(status="ok", compile_s=time.perf_counter() - start)
        except Exception as error:
            _emit(traceback.format_exc())
            row["status"] = f"error: {type(error).__name__}: {error}"
        _emit_row(row)

    # 3. bf16 correctness
    n_check = 200 if args.quick else 1000
    for with_global in (False, True):
        result = {"kind": "check", "check": f"bf16 pallas vs xla and f32 reference, global={with_global}",
                  "n": n_check, "device": device_kind}
        try:
            check = inputs(2, 2, n_check, 64, with_global, lengths=[n_check - 77, 0])
            outputs = {}
            for name, attention in (("pallas", banded_attention_pallas), ("xla", banded_attention_xla),
                                    ("reference", banded_attention_reference)):
                args_in = check
                if name == "reference":  # float32 reference of the same (bf16-rounded) inputs
                    args_in = tuple(None if x is None else x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x
                                    for x in check)
                with jax.default_matmul_precision("highest"):
                    outputs[name] = jax.block_until_ready(grad_fn(attention, with_global)(*args_in))
            labels = ["q", "k", "v", "bias", "global_logit", "global_value"]
            worst = 0.0
            (grads, out), _ = outputs["pallas"], None
            for other in ("xla", "reference"):
                other_grads, other_out = outputs[other]
                scale = float(jnp.max(jnp.abs(other_out.astype(jnp.float32))))
                error = float(jnp.max(jnp.abs(out.astype(jnp.float32) - other_out.astype(jnp.float32)))) / max(scale, 1e-6)
                result[f"forward_vs_{other}"] = error
                worst = max(worst, error)
                for label, g, r in zip(labels, grads, other_grads):
                    g, r = g.astype(jnp.float32), r.astype(jnp.float32)
                    rel = float(jnp.max(jnp.abs(g - r)) / jnp.maximum(jnp.max(jnp.abs(r)), 1e-6))
                    result[f"grad_{label}_vs_{other}"] = rel
                    worst = max(worst, rel)
            # dbias on band cells whose key j = i + d - w is outside [0, N) or masked: exactly 0.
            dbias = np.asarray(grads[3])
            keys_of_cell = np.arange(n_check)[:, None] + np.arange(2 * window + 1)[None, :] - window
            mask = np.asarray(check[4])
            inside = (keys_of_cell >= 0) & (keys_of_cell < n_check)
            key_valid = np.zeros((2, n_check, 2 * window + 1), bool)
            for b in range(2):
                key_valid[b] = inside & mask[b][np.clip(keys_of_cell, 0, n_check - 1)]
            outside = np.broadcast_to(~key_valid[:, None], dbias.shape)
            result["dbias_outside_band_max_abs"] = float(np.max(np.abs(dbias[outside]), initial=0.0))
            result["worst_rel"] = worst
            ok = worst <= 3e-2 and result["dbias_outside_band_max_abs"] == 0.0
            result["status"] = "ok" if ok else "MISMATCH"
        except Exception as error:
            _emit(traceback.format_exc())
            result["status"] = f"error: {type(error).__name__}: {error}"
        _emit_row(result)

    # 4. timings: 16k first (the length the issue asks about), then the rest ascending
    lengths = sorted(args.lengths, key=lambda n: (n != 16384, n))
    for n in lengths:
        batch_inputs = None
        for name, attention in (("xla", banded_attention_xla), ("pallas", banded_attention_pallas)):
            row = {"kind": "kernel", "impl": name, "tokens": n, "heads": heads, "device": device_kind}
            if args.deadline is not None and time.time() > args.deadline:
                row["status"] = "skipped (time budget)"
            else:
                try:
                    batch_inputs = batch_inputs or inputs(1, heads, n, 64, with_global=True)
                    fn = grad_fn(attention)
                    for _ in range(max(args.warmup, 1)):
                        jax.block_until_ready(fn(*batch_inputs))
                    times = []
                    for _ in range(args.steps):
                        start = time.perf_counter()
                        jax.block_until_ready(fn(*batch_inputs))
                        times.append(time.perf_counter() - start)
                    row.update(status="ok", step_s=statistics.median(times))
                except Exception as error:
                    if not _is_out_of_memory(error):
                        _emit(traceback.format_exc())
                    row["status"] = "OOM" if _is_out_of_memory(error) else f"error: {type(error).__name__}: {error}"
            _emit_row(row)


# ------------------------------------------------------------------------------------------
# Parent: one child per implementation, then the table
# ------------------------------------------------------------------------------------------


def _gib(value) -> str:
    return "" if value is None else f"{value / 2**30:.3f}"


def format_tables(rows, args) -> str:
    geo = geometry(args)
    parts = []
    for check in (r for r in rows if r.get("kind") in ("compile", "check")):
        parts.append("Kernel check on the device: " + json.dumps(check) + "\n")
    kernel_rows = [r for r in rows if r.get("kind") == "kernel"]
    if kernel_rows:
        parts += [
            f"Banded attention alone, forward+backward (B=1, {kernel_rows[0]['heads']} heads, D=64, w={geo['window']}, "
            "bf16 q/k/v, f32 bias, global key), median step:",
            "",
            "| impl | tokens | status | step (ms) |",
            "|---|---:|---|---:|",
        ]
        for r in kernel_rows:
            step = f"{1e3 * r['step_s']:.2f}" if "step_s" in r else ""
            parts.append(f"| {r['impl']} | {r['tokens']} | {r['status']} | {step} |")
        parts.append("")
    encoder_rows = [r for r in rows if r.get("kind") == "encoder"]
    parts += [
        f"Encoder: {geo['num_hidden_layers']} layers, hidden {geo['hidden_size']}, {geo['num_attention_heads']} heads, "
        f"FFN {geo['intermediate_size']}, vocab {geo['vocab_size']}, attention=arrow, window {geo['window']}, "
        f"bf16 compute, LoRA rank {geo['lora_rank']} on query/value (grads for LoRA only), batch 1, "
        f"remat={geo['remat']}, median of {args.steps} steps after {args.warmup} warm-up.",
        "TFLOP/s: model FLOPs per step = L * (2 * 2N(4d^2 + 2dF) + 3 * 2Nd(2(2w+2) + 2(2w+1))) / step time.",
        "",
        "| impl | tokens | status | step (s) | tokens/s | TFLOP/s | peak mem (GiB) | compiled temp (GiB) | compile (s) | device |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in encoder_rows:
        step = f"{r['step_s']:.4f}" if "step_s" in r else ""
        tps = f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else ""
        tflops = f"{r['tflops']:.3g}" if "tflops" in r else ""
        compile_s = f"{r['compile_s']:.1f}" if "compile_s" in r else ""
        parts.append(
            f"| {r['impl']} | {r['tokens']} | {r['status']} | {step} | {tps} | {tflops} | {_gib(r.get('peak_bytes'))} | "
            f"{_gib(r.get('compiled_temp_bytes'))} | {compile_s} | {r.get('device', '')} |"
        )
    return "\n".join(parts) + "\n"


def run_parent(args) -> str:
    start = time.time()
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    children = []
    if "pallas" in args.impls and not args.no_kernel_check:
        children.append(("check", 0.2))
    if not args.check_only:
        children += [(impl, 1.0) for impl in args.impls]
    total_weight = sum(weight for _, weight in children)
    out = args.out or (os.path.join(os.environ["OUT"], "gpu_encoder.md") if os.environ.get("OUT") else None)
    rows = []
    spent_weight = 0.0
    for child, weight in children:
        # Each child gets its share of the budget; rows past its deadline are skipped, not lost.
        spent_weight += weight
        deadline = start + args.budget_s * spent_weight / total_weight
        returncode, got = _run_child_process(["--impl-child", child], args, env, deadline)
        if child != "check":
            for r in got:
                r["kind"] = "encoder"
            seen = {r["tokens"] for r in got}
            got += [dict(kind="encoder", impl=child, tokens=n, status=f"crashed (exit {returncode})")
                    for n in args.lengths if n not in seen]
            got.sort(key=lambda r: r["tokens"])
        rows += got
        _write_table(out, format_tables(rows, args))  # after every child: a killed run keeps its rows
    table = format_tables(rows, args)
    print(table)
    if out:
        print(f"wrote {out}")
    return table


def _write_table(path, table: str) -> None:
    if path:
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        command_line = "python benchmarks/gpu_encoder.py " + " ".join(sys.argv[1:])
        pathlib.Path(path).write_text(f"Command: `{command_line.strip()}`\n\n" + table)


def _run_child_process(extra, args, env, deadline):
    """Run this script as a child, streaming its output; returns (exit code, parsed result lines).

    The child is killed 60 s after its deadline (a compile or step can outlast the deadline check).
    """
    command = [sys.executable, str(pathlib.Path(__file__).resolve()), "--child", *extra]
    command += _forwarded_flags(args) + ["--deadline", str(deadline)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    got, tail = [], []
    watchdog = _Watchdog(process, deadline + 60.0)
    for line in process.stdout:
        if line.startswith(ROW_PREFIX):
            row = json.loads(line[len(ROW_PREFIX):])
            got.append(row)
            print("  " + json.dumps(row), flush=True)
        else:
            tail = (tail + [line.rstrip()])[-8:]
    returncode = process.wait()
    watchdog.cancel()
    if returncode != 0:
        print(f"child {extra} exited with {returncode}:\n  " + "\n  ".join(tail), file=sys.stderr)
    return returncode, got


class _Watchdog:
    """Kill a child process that is still running at `kill_at` (epoch seconds)."""

    def __init__(self, process, kill_at: float):
        import threading

        self._timer = threading.Timer(max(0.0, kill_at - time.time()), process.kill)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()


def _forwarded_flags(args) -> list[str]:
    flags = ["--layers", str(args.layers), "--window", str(args.window), "--lora-rank", str(args.lora_rank),
             "--warmup", str(args.warmup), "--steps", str(args.steps), "--lengths", *map(str, args.lengths)]
    if args.quick:
        flags.append("--quick")
    if args.remat:
        flags.append("--remat")
    return flags


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        if str(REPO_ROOT) not in sys.path:
            sys.path.insert(0, str(REPO_ROOT))
        if args.impl_child == "check":
            run_kernel_check(args)
        else:
            run_child(args, args.impl_child)
    else:
        run_parent(args)


if __name__ == "__main__":
    main()
