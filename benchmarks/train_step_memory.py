"""Compiled memory (and optionally the time) of one SeNER training step at a config's full geometry.

    python benchmarks/train_step_memory.py --config=configs/scirex.py --tokens=5120 --words=4096 \
        [--batch=1] [--dtype=bfloat16] [--remat] [--run]

Compiles `train_step.make_train_step` on abstract inputs (`train_step.compile_train_step`, nothing
is allocated) on one device and prints XLA's memory analysis; with --run it also allocates random
weights and times real steps (only sensible where the memory fits). Random weights: no
pretrained checkpoint is read (`model.pretrained` is ignored).
"""
from __future__ import annotations

import json
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from sener_jax import train_step

_CONFIG = config_flags.DEFINE_config_file("config", "configs/scirex.py", "Config file.")
_TOKENS = flags.DEFINE_integer("tokens", 5120, "Tokens per segment (N).")
_WORDS = flags.DEFINE_integer("words", 4096, "Words per segment (L).")
_BATCH = flags.DEFINE_integer("batch", 1, "Rows per step on the one device.")
_TYPES = flags.DEFINE_integer("types", 4, "Entity types (R).")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Override model.encoder.dtype.")
_REMAT = flags.DEFINE_bool("remat", None, "Override model.encoder.remat.")
_RUN = flags.DEFINE_bool("run", False, "Also allocate and time real steps.")
_STEPS = flags.DEFINE_integer("steps", 2, "Timed steps with --run (after one warm-up step).")


def main(argv):
    del argv
    config = _CONFIG.value
    config.model.pretrained = ""
    if _DTYPE.value:
        config.model.encoder.dtype = _DTYPE.value
    if _REMAT.value is not None:
        config.model.encoder.remat = _REMAT.value
    model_config = train_step.model_config_from(config, vocab_size=128100, num_types=_TYPES.value)
    mesh = train_step.make_mesh(jax.devices()[:1])
    state, frozen, optimizer = train_step.abstract_train_state(config, model_config)
    batch = train_step.abstract_batch(_BATCH.value, _TOKENS.value, _WORDS.value, model_config.head.band_half_width, _TYPES.value)
    start = time.perf_counter()
    compiled = train_step.compile_train_step(model_config, optimizer, state, frozen, batch, mesh)
    compile_s = time.perf_counter() - start
    parts = train_step.memory_analysis(compiled)
    # The output keys are XLA's field names (earlier results in benchmarks/RESULTS.md use them).
    report = {"argument_size_in_bytes": parts["arguments"], "output_size_in_bytes": parts["outputs"],
              "alias_size_in_bytes": parts["aliased"], "temp_size_in_bytes": parts["temporaries"],
              "peak_estimate_bytes": parts["peak"]}
    count = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))  # noqa: E731
    report.update(
        device=str(jax.devices()[0]), tokens=_TOKENS.value, words=_WORDS.value, batch=_BATCH.value,
        dtype=config.model.encoder.dtype, remat=config.model.encoder.remat, finetune=config.train.finetune,
        trainable_params=count(state["trainable"]), frozen_params=count(frozen), compile_s=round(compile_s, 1),
    )
    if _RUN.value:
        real_state, real_frozen, _ = train_step.create_train_state(config, model_config, 1000, jax.random.PRNGKey(0))
        real_state, real_frozen = train_step.replicate(real_state, mesh), train_step.replicate(real_frozen, mesh)
        rng = np.random.default_rng(0)
        arrays = {
            "input_ids": rng.integers(5, 128000, (_BATCH.value, _TOKENS.value)).astype(np.int32),
            "attention_mask": np.ones((_BATCH.value, _TOKENS.value), np.int32),
            "word_index": np.minimum(np.arange(_TOKENS.value) * _WORDS.value // _TOKENS.value, _WORDS.value - 1)[None]
            .repeat(_BATCH.value, 0).astype(np.int32),
            "word_mask": np.ones((_BATCH.value, _WORDS.value), bool),
            "labels": np.zeros((_BATCH.value, _WORDS.value, 2 * model_config.head.band_half_width + 1, _TYPES.value), np.uint8),
            "row_weight": np.ones((_BATCH.value,), np.float32),
        }
        device_arrays = train_step.shard_batch(arrays, mesh)
        real_state, metrics = compiled(real_state, real_frozen, device_arrays)
        jax.block_until_ready(metrics)
        times = []
        for _ in range(_STEPS.value):
            start = time.perf_counter()
            real_state, metrics = compiled(real_state, real_frozen, device_arrays)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
        report["step_s"] = [round(t, 2) for t in times]
        report["loss"] = float(metrics["loss"])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    app.run(main)
