"""Paper-scale training step: compiled memory, compile time, longest input, and one real step.

    python benchmarks/paper_scale.py [--parts=peak,layers,doubling,run,analytic] [--remat=layer]
        [--dtype=float32] [--budget_gib=80]

Every memory figure is XLA's compiled memory analysis of the real jitted training step on one CPU
device (`memory.predict_memory(..., method="compiled")`; nothing is allocated), for the SciREX
config (configs/scirex.py: DeBERTa-v3-large geometry, 24 layers, LoRA, arrow attention w=128):

  peak      5,120 tokens, 4,096 words, batch 2 (the paper's batch): peak GB per device, compile s
  layers    compile time at 2 vs 24 layers (scanned layers: it should not grow with depth)
  doubling  batch 1 at 4k..64k tokens (words = memory.words_for): peak per length, the ratio per
            doubling, and the longest of them that fits `budget_gib`
  run       a 24-layer step really executed on this CPU at 1,024 tokens, batch 1 (random weights)
  analytic  the analytic predictor next to the compiled one at the `peak` point
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.scirex import get_config  # noqa: E402
from sener_jax import memory, train_step  # noqa: E402

GB = 1e9


def _config(args, layers: int = 24):
    config = get_config()
    config.model.pretrained = ""
    config.model.encoder.remat = args.remat
    config.model.encoder.num_hidden_layers = layers
    return config


def _predict(config, tokens, batch, words, dtype, method="compiled"):
    start = time.perf_counter()
    report = memory.predict_memory(config, tokens, batch, dtype, "train", method=method, n_words=words, vocab_size=128100)
    return report, time.perf_counter() - start


def peak(args):
    report, seconds = _predict(_config(args), 5120, 2, 4096, args.dtype)
    print(f"peak: SciREX 24 layers, 5120 tokens, 4096 words, batch 2, {args.dtype}, remat={args.remat}: "
          f"{report.peak / GB:.2f} GB ({report.peak_gib:.2f} GiB) per device; compile {seconds:.0f} s", flush=True)
    return report


def layers(args):
    for count in (2, 24):
        report, seconds = _predict(_config(args, count), 5120, 2, 4096, args.dtype)
        print(f"layers: {count:2d} layers: compile {seconds:.0f} s, peak {report.peak / GB:.2f} GB", flush=True)


def doubling(args):
    previous, longest = None, 0
    for tokens in (4096, 8192, 16384, 32768, 65536):
        report, seconds = _predict(_config(args), tokens, 1, memory.words_for(tokens), args.dtype)
        ratio = f", x{report.peak / previous:.2f} per doubling" if previous else ""
        print(f"doubling: {tokens} tokens ({report.n_words} words), batch 1: {report.peak_gib:.2f} GiB{ratio} "
              f"(compile {seconds:.0f} s)", flush=True)
        previous = report.peak
        if report.peak_gib <= args.budget_gib:
            longest = tokens
    print(f"doubling: longest trainable input in {args.budget_gib:g} GiB at batch 1 (of these): {longest} tokens", flush=True)


def run(args):
    config = _config(args)
    model_config = train_step.model_config_from(config, vocab_size=128100, num_types=4)
    mesh = train_step.make_mesh(jax.devices()[:1])
    tokens, words, width = 1024, 800, model_config.head.band_half_width
    state, frozen, optimizer = train_step.abstract_train_state(config, model_config)
    batch = train_step.abstract_batch(1, tokens, words, width, 4)
    compiled = train_step.compile_train_step(model_config, optimizer, state, frozen, batch, mesh)
    real_state, real_frozen, _ = train_step.create_train_state(config, model_config, 1000, jax.random.PRNGKey(0))
    real_state, real_frozen = train_step.replicate(real_state, mesh), train_step.replicate(real_frozen, mesh)
    rng = np.random.default_rng(0)
    arrays = {
        "input_ids": rng.integers(5, 128000, (1, tokens)).astype(np.int32),
        "attention_mask": np.ones((1, tokens), np.int32),
        "word_index": np.minimum(np.arange(tokens) * words // tokens, words - 1)[None].astype(np.int32),
        "word_mask": np.ones((1, words), bool),
        "labels": (rng.random((1, words, 2 * width + 1, 4)) < 0.001).astype(np.uint8),
        "row_weight": np.ones((1,), np.float32),
    }
    arrays = train_step.shard_batch(arrays, mesh)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        real_state, metrics = compiled(real_state, real_frozen, arrays)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    print(f"run: 24-layer step, 1024 tokens, {words} words, batch 1: {times[-1]:.1f} s per step "
          f"(first {times[0]:.1f} s), loss {float(metrics['loss']):.4f}", flush=True)


def analytic(args):
    compiled, _ = _predict(_config(args), 5120, 2, 4096, args.dtype)
    estimate, seconds = _predict(_config(args), 5120, 2, 4096, args.dtype, method="analytic")
    print(f"analytic: {estimate.peak / GB:.2f} GB vs compiled {compiled.peak / GB:.2f} GB "
          f"({100 * (estimate.peak / compiled.peak - 1):+.0f}%), {seconds:.0f} s", flush=True)


PARTS = {"peak": peak, "layers": layers, "doubling": doubling, "run": run, "analytic": analytic}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="peak,layers,doubling,run", help=f"comma-separated of {sorted(PARTS)}")
    parser.add_argument("--remat", default="layer", help="model.encoder.remat policy")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--budget_gib", type=float, default=80.0)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; load average {os.getloadavg()[0]:.1f}", flush=True)
    for part in args.parts.split(","):
        PARTS[part](args)


if __name__ == "__main__":
    main()
