"""Seconds per jitted pretraining step of configs/pretrain.py, by MLM output-vocabulary size: how much
of the step the tied vocabulary projection and its softmax take.

    python benchmarks/pretrain_step_time.py                      # 35,763 (the shared corpus's ids) and 1,000
    python benchmarks/pretrain_step_time.py --output_vocab=128001,35763 --steps=8
    python benchmarks/pretrain_step_time.py --output_vocab=35763 --objectives=mlm,rtd   # MLM vs RTD step

Random token ids (batch and segment length of the config, all rows full), 85 prediction slots per
row as `MlmSpec.max_predictions(512)` gives at 15%, no dropout (the config's), one device. The first
call (compile) is not timed. Results: benchmarks/RESULTS.md ("Span masking in pretraining").
"""
from __future__ import annotations

import pathlib
import sys
import time

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs.pretrain import get_config  # noqa: E402
from sener_jax.data.mlm import MlmSpec  # noqa: E402
from sener_jax.pretrain_step import encoder_config_of, initial_state, make_pretrain_step, objective_of  # noqa: E402
from sener_jax.train_step import make_mesh, replicate  # noqa: E402

VOCAB = 128_001  # the DeBERTa-v3 tokenizer's

_OUTPUT_VOCAB = flags.DEFINE_list("output_vocab", ["35763", "1000"], "MLM output-vocabulary sizes to time.")
_STEPS = flags.DEFINE_integer("steps", 8, "Timed steps per size (after one compiling step).")
_OBJECTIVES = flags.DEFINE_list("objectives", ["mlm"], "pretrain.objective values to time (mlm, rtd).")


def seconds_per_step(config, n_out: int, steps: int, rng: np.random.Generator) -> float:
    encoder = encoder_config_of(config, VOCAB)
    p, rows, length = config.pretrain, config.pretrain.batch_size, config.data.max_tokens
    mesh = make_mesh()
    state, optimizer = initial_state(config, encoder, p.max_steps)
    state = replicate(state, mesh)
    output_ids = None if n_out >= VOCAB else np.sort(rng.choice(VOCAB, n_out, replace=False)).astype(np.int32)
    step = make_pretrain_step(encoder, optimizer, mesh, output_ids=output_ids, deterministic=True,
                              objective=objective_of(config, encoder))
    slots = MlmSpec(mask_id=0, vocab_size=VOCAB, special_ids=(), fraction=p.mask_probability).max_predictions(length)
    batch = {"input_ids": rng.integers(5, VOCAB - 1, (rows, length)).astype(np.int32),
             "attention_mask": np.ones((rows, length), np.int32),
             "mlm_positions": np.sort(rng.integers(0, length, (rows, slots)), axis=1).astype(np.int32),
             "mlm_targets": rng.integers(0, min(n_out, VOCAB), (rows, slots)).astype(np.int32),
             "mlm_weights": np.ones((rows, slots), np.float32)}
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / steps


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    for objective in _OBJECTIVES.value:
        config = get_config()
        config.pretrain.objective = objective
        for size in map(int, _OUTPUT_VOCAB.value):
            print(f"{objective}, output vocabulary {size}: {seconds_per_step(config, size, _STEPS.value, rng):.3f} s per "
                  f"step (batch {config.pretrain.batch_size} x {config.data.max_tokens}, {jax.devices()[0].platform})",
                  flush=True)


if __name__ == "__main__":
    app.run(main)
