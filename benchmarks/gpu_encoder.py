"""Long-input encoder benchmark on one GPU: arrow attention, `attention_impl` "xla" vs "pallas".

DeBERTa-v3-large geometry (24 layers, hidden 1024, 16 heads, FFN 4096, vocab 128,100), random
weights, bf16 compute (params float32), batch 1, lengths 4k..64k tokens, one training-like step:
forward + backward with the base weights frozen and LoRA (rank 8) on query_proj / value_proj; the
gradient is taken w.r.t. the LoRA leaves only (so XLA drops the frozen weights' gradients). The
step runs with deterministic=True (no dropout) for both implementations.

Per (impl, length) row: compile time, step time (median of --steps timed steps after --warmup
steps), tokens/s, achieved TFLOP/s and peak device memory (`memory_stats()['peak_bytes_in_use']`
where the backend has it, and always XLA's compiled memory analysis). Each implementation runs
in its own child process, lengths ascending, so the peak of a row is not polluted by the other
implementation; a row that runs out of memory (or fails otherwise) is recorded and the next row
is tried. A wall-clock budget (--budget-s) skips the rows that would start after it.

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
    parser.add_argument("--budget-s", type=float, default=540.0, help="total wall-clock budget; later rows are skipped")
    parser.add_argument("--out", default=None, help="markdown output path (default $OUT/gpu_encoder.md when $OUT is set)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl-child", choices=["xla", "pallas", "check"], help=argparse.SUPPRESS)
    parser.add_argument("--no-kernel-check", action="store_true",
                        help="skip the Pallas-vs-reference correctness check that runs before the table")
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
    import dataclasses

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
    for n in args.lengths:
        row = dict(impl=impl, tokens=n, layers=config.num_hidden_layers, remat=config.remat, device=str(device.device_kind))
        if args.deadline is not None and time.time() > args.deadline:
            row["status"] = "skipped (time budget)"
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
            row["status"] = "OOM" if _is_out_of_memory(error) else f"error: {type(error).__name__}: {str(error)[:300]}"
        print(ROW_PREFIX + json.dumps(row), flush=True)


def run_kernel_check(args) -> None:
    """The Pallas kernel against the dense reference on this device (float32), before timing it.

    Prints one JSON line: forward max abs error and per-input gradient errors relative to the
    reference gradient's max magnitude, for a linear functional of the output.
    """
    import jax
    import jax.numpy as jnp

    from sener_jax.ops.band_pallas import banded_attention_pallas
    from sener_jax.ops.band_reference import banded_attention_reference

    batch, heads, n, head_dim, window = 2, 2, (200 if args.quick else 1000), 64, args.window
    keys = jax.random.split(jax.random.PRNGKey(0), 8)
    q, k, v = (jax.random.normal(keys[i], (batch, heads, n, head_dim)) for i in range(3))
    bias = jax.random.normal(keys[3], (batch, heads, n, 2 * window + 1))
    key_mask = jnp.arange(n)[None, :] < jnp.array([[n], [n - 77]])
    global_logit = jax.random.normal(keys[4], (batch, heads, n))
    global_value = jax.random.normal(keys[5], (batch, heads, head_dim))
    weights = jax.random.normal(keys[6], (batch, heads, n, head_dim))
    result = {"check": "pallas vs reference (float32)", "device": str(jax.devices()[0].device_kind), "n": n}

    def loss(attention, q, k, v, bias, global_logit, global_value):
        out = attention(q, k, v, bias, key_mask, window=window, global_logit=global_logit, global_value=global_value)
        return jnp.sum(out * weights), out

    try:
        outputs = {}
        for name, attention in (("pallas", banded_attention_pallas), ("reference", banded_attention_reference)):
            grad = jax.jit(jax.grad(lambda *a, f=attention: loss(f, *a), argnums=(0, 1, 2, 3, 4, 5), has_aux=True))
            # XLA may use TF32 for float32 matmuls on a GPU; the kernel's float32 dots are IEEE.
            with jax.default_matmul_precision("highest"):
                outputs[name] = jax.block_until_ready(grad(q, k, v, bias, global_logit, global_value))
        (grads, out), (ref_grads, ref_out) = outputs["pallas"], outputs["reference"]
        result["forward_abs"] = float(jnp.max(jnp.abs(out - ref_out)))
        for label, g, r in zip(["q", "k", "v", "bias", "global_logit", "global_value"], grads, ref_grads):
            result[f"grad_{label}_rel"] = float(jnp.max(jnp.abs(g - r)) / jnp.maximum(jnp.max(jnp.abs(r)), 1e-6))
        result["status"] = "ok"
    except Exception as error:
        result["status"] = f"error: {type(error).__name__}: {str(error)[:600]}"
    print(ROW_PREFIX + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------
# Parent: one child per implementation, then the table
# ------------------------------------------------------------------------------------------


def _gib(value) -> str:
    return "" if value is None else f"{value / 2**30:.3f}"


def format_table(rows, args) -> str:
    geo = geometry(args)
    lines = [
        f"Encoder: {geo['num_hidden_layers']} layers, hidden {geo['hidden_size']}, {geo['num_attention_heads']} heads, "
        f"FFN {geo['intermediate_size']}, vocab {geo['vocab_size']}, attention=arrow, window {geo['window']}, "
        f"bf16 compute, LoRA rank {geo['lora_rank']} on query/value (grads for LoRA only), batch 1, "
        f"remat={geo['remat']}, median of {args.steps} steps after {args.warmup} warm-up.",
        "TFLOP/s: model FLOPs per step = L * (2 * 2N(4d^2 + 2dF) + 3 * 2Nd(2(2w+2) + 2(2w+1))) / step time.",
        "",
        "| impl | tokens | status | step (s) | tokens/s | TFLOP/s | peak mem (GiB) | compiled temp (GiB) | compile (s) | device |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        step = f"{r['step_s']:.4f}" if "step_s" in r else ""
        tps = f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else ""
        tflops = f"{r['tflops']:.3g}" if "tflops" in r else ""
        compile_s = f"{r['compile_s']:.1f}" if "compile_s" in r else ""
        lines.append(
            f"| {r['impl']} | {r['tokens']} | {r['status']} | {step} | {tps} | {tflops} | {_gib(r.get('peak_bytes'))} | "
            f"{_gib(r.get('compiled_temp_bytes'))} | {compile_s} | {r.get('device', '')} |"
        )
    return "\n".join(lines) + "\n"


def run_parent(args) -> str:
    deadline = time.time() + args.budget_s
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    check_text = ""
    if "pallas" in args.impls and not args.no_kernel_check:
        check = _run_child_process(["--impl-child", "check"], args, env, deadline)
        check_text = "Kernel check: " + (json.dumps(check[1][0]) if check[1] else f"no result (exit {check[0]})") + "\n\n"
        print(check_text, flush=True)
    rows = []
    for impl in args.impls:
        returncode, got = _run_child_process(["--impl-child", impl], args, env, deadline)
        for r in got:
            print(f"  {r['impl']:>6} {r['tokens']:>6}: {r['status']}" + (f", {r['step_s']:.4f} s" if "step_s" in r else ""),
                  flush=True)
        seen = {r["tokens"] for r in got}
        for n in args.lengths:
            if n not in seen:
                got.append(dict(impl=impl, tokens=n, status=f"crashed (exit {returncode})"))
        rows += sorted(got, key=lambda r: r["tokens"])
    table = check_text + format_table(rows, args)
    print(table)
    out = args.out or (os.path.join(os.environ["OUT"], "gpu_encoder.md") if os.environ.get("OUT") else None)
    if out:
        pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
        command_line = "python benchmarks/gpu_encoder.py " + " ".join(sys.argv[1:])
        pathlib.Path(out).write_text(f"Command: `{command_line.strip()}`\n\n" + table)
        print(f"wrote {out}")
    return table


def _run_child_process(extra, args, env, deadline):
    """Run this script as a child; returns (exit code, parsed result lines)."""
    command = [sys.executable, str(pathlib.Path(__file__).resolve()), "--child", *extra]
    command += _forwarded_flags(args) + ["--deadline", str(deadline)]
    result = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    got = [json.loads(line[len(ROW_PREFIX):]) for line in result.stdout.splitlines() if line.startswith(ROW_PREFIX)]
    if result.returncode != 0:
        tail = result.stdout.strip().splitlines()[-8:]
        print(f"child {extra} exited with {result.returncode}:\n  " + "\n  ".join(tail), file=sys.stderr)
    return result.returncode, got


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
