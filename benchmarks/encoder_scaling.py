"""Encoder forward+backward cost against sequence length: full/dense vs arrow/xla vs arrow/pallas
(JAX) vs Hugging Face PyTorch DebertaV2Model (full attention), at one geometry.

    python benchmarks/encoder_scaling.py                       # 2 layers at DeBERTa-v3-large width
    python benchmarks/encoder_scaling.py --layers 24 --lengths 1024 2048 4096 8192 16384 32768

For each (implementation, length): forward+backward of a sum-of-squares loss w.r.t. every parameter
(batch 1, random weights and ids), the median wall time of --runs runs after one warm-up, and
memory: for JAX, XLA's compiled temp bytes (`memory_analysis()`, exact, before running); for
PyTorch, the peak resident-set growth of a child process during the timed steps, sampled every
5 ms (measured; parameters and gradients excluded, as they exist before the steps). An implementation stops at
the first length whose predicted memory exceeds --cap-gb (JAX: compiled temp + arguments +
outputs; PyTorch: the previous peak scaled quadratically, full attention being O(N^2)).
Pallas runs in interpret mode off-GPU, so its CPU times say nothing about the kernel; the
default CPU run therefore only compiles it (memory column) unless --time-pallas is given.
--max-timed-length keeps a CPU run short: longer JAX cases are compiled (memory) but not run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

JAX_IMPLS = {"full/dense": ("full", "dense"), "arrow/xla": ("arrow", "xla"), "arrow/pallas": ("arrow", "pallas")}
TORCH_IMPL = "hf-torch/full"


def encoder_config(layers: int, window: int):
    from sener_jax.models.deberta import EncoderConfig

    # DeBERTa-v3-large geometry; a small vocabulary (the embedding table is not what scales).
    return EncoderConfig(
        vocab_size=1000, hidden_size=1024, num_hidden_layers=layers, num_attention_heads=16,
        intermediate_size=4096, position_buckets=256, max_relative_positions=512, window=window,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )


def jax_case(config, length: int, runs: int, cap_bytes: int, timed: bool) -> dict:
    import jax
    import jax.numpy as jnp

    from sener_jax.models.deberta import DebertaEncoder

    model = DebertaEncoder(config)
    ids_spec = jax.ShapeDtypeStruct((1, length), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32), jnp.ones((1, 8), jnp.int32))["params"])

    def loss(params, ids, mask):
        return jnp.sum(model.apply({"params": params}, ids, mask) ** 2)

    step = jax.jit(jax.value_and_grad(loss))
    start = time.perf_counter()
    compiled = step.lower(shapes, ids_spec, ids_spec).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    total = memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
    row = {"temp_bytes": memory.temp_size_in_bytes, "total_bytes": total, "compile_s": compile_s}
    if total > cap_bytes:
        row["status"] = "over cap"
        return row
    if not timed:
        row["status"] = "compiled only"
        return row
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.02, jnp.float32), shapes)
    ids = jnp.asarray(rng.integers(1, config.vocab_size, size=(1, length)), jnp.int32)
    mask = jnp.ones_like(ids)
    jax.block_until_ready(compiled(params, ids, mask))  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(compiled(params, ids, mask))
        times.append(time.perf_counter() - start)
    row.update(status="ok", median_s=statistics.median(times))
    return row


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssSampler:
    """Peak resident set size while active, sampled every few milliseconds by a thread."""

    def __init__(self, interval_s: float = 0.005):
        import threading

        self.interval_s, self.peak, self._stop = interval_s, _rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def torch_worker(layers: int, length: int, runs: int) -> dict:
    """Runs in a child process (so that its memory is its own)."""
    import gc

    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.DebertaV2Config(
        vocab_size=1000, hidden_size=1024, num_hidden_layers=layers, num_attention_heads=16, intermediate_size=4096,
        relative_attention=True, position_buckets=256, max_relative_positions=512, pos_att_type=["p2c", "c2p"],
        share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, max_position_embeddings=512,
    )
    model = transformers.DebertaV2Model(config).train()
    ids = torch.randint(1, 1000, (1, length))
    mask = torch.ones_like(ids)

    def step():
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        (out ** 2).sum().backward()

    step()  # warm-up (also allocates the gradients, which then stay)
    gc.collect()
    baseline = _rss_bytes()
    times = []
    with RssSampler() as sampler:
        for _ in range(runs):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    return {"status": "ok", "median_s": statistics.median(times), "peak_rss_growth_bytes": sampler.peak - baseline}


def torch_case(layers: int, length: int, runs: int) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--torch-worker", str(length), "--layers", str(layers), "--runs", str(runs)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        return {"status": f"failed ({result.stderr.strip().splitlines()[-1] if result.stderr.strip() else result.returncode})"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def _gib(value) -> str:
    return "" if value is None else f"{value / 2**30:.2f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cap-gb", type=float, default=8.0)
    parser.add_argument("--impls", nargs="+", default=[*JAX_IMPLS, TORCH_IMPL], choices=[*JAX_IMPLS, TORCH_IMPL])
    parser.add_argument("--time-pallas", action="store_true", help="also time arrow/pallas (interpret mode off-GPU)")
    parser.add_argument("--max-timed-length", type=int, default=None,
                        help="JAX cases longer than this are compiled (memory column) but not run")
    parser.add_argument("--torch-worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.torch_worker is not None:
        print(json.dumps(torch_worker(args.layers, args.torch_worker, args.runs)))
        return 0

    import jax

    cap_bytes = int(args.cap_gb * 2**30)
    config = encoder_config(args.layers, args.window)
    backend = jax.default_backend()
    print(f"# encoder_scaling: {args.layers} layers, hidden 1024, 16 heads, FFN 4096, window {args.window}, batch 1, "
          f"float32, backend {backend}, cap {args.cap_gb} GiB, median of {args.runs} runs after 1 warm-up")
    print("| impl | tokens | fwd+bwd s (median) | memory GiB | memory measure | status |")
    print("|---|---|---|---|---|---|")
    for impl in args.impls:
        stopped = False
        previous = None  # (length, bytes) for the PyTorch extrapolation
        for length in args.lengths:
            if stopped:
                print(f"| {impl} | {length} | | | | skipped (over cap at a shorter length) |", flush=True)
                continue
            if impl == TORCH_IMPL:
                if previous is not None and previous[1] * (length / previous[0]) ** 2 > cap_bytes:
                    stopped = True
                    print(f"| {impl} | {length} | | >{_gib(cap_bytes)} (predicted) | peak RSS growth | over cap |", flush=True)
                    continue
                row = torch_case(args.layers, length, args.runs)
                memory, measure = row.get("peak_rss_growth_bytes"), "peak RSS growth"
                if memory is not None:
                    previous = (length, memory)
                stopped = row["status"] != "ok"
            else:
                pattern, attention_impl = JAX_IMPLS[impl]
                case_config = dataclasses.replace(config, attention=pattern, attention_impl=attention_impl)
                timed = impl != "arrow/pallas" or args.time_pallas or backend == "gpu"
                timed = timed and (args.max_timed_length is None or length <= args.max_timed_length)
                row = jax_case(case_config, length, args.runs, cap_bytes, timed)
                memory, measure = row["temp_bytes"], "XLA temp (compiled)"
                stopped = row["status"] == "over cap"
            seconds = f"{row['median_s']:.3f}" if "median_s" in row else ""
            print(f"| {impl} | {length} | {seconds} | {_gib(memory)} | {measure} | {row['status']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
