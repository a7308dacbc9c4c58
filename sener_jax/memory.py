"""Per-device memory of training and inference, predicted without allocating anything.

Two independent predictors of the peak bytes one device needs for one step of B rows of N tokens
(L words), with params replicated and the batch sharded (so per-device == a one-device program on
the per-device batch):

  - "compiled": the real program (`train_step.make_train_step`, or the inference forward) lowered with
    ShapeDtypeStructs and compiled; XLA's buffer assignment reports arguments, outputs, donated
    aliases and temporaries, and peak = arguments + outputs - aliases + temporaries. Exact for the
    backend it compiles for (CPU here; GPU fusion and layouts differ somewhat).
  - "analytic": no compilation. The argument bytes (params, optimizer state, batch) counted
    exactly, plus the step's working bytes as named terms that follow the program's structure
    (saved layer inputs under per-layer remat, then the larger of the head's and one encoder
    layer's backward working set; `memory_terms`). Within 2% of XLA:CPU's compiled figure on the
    SciREX geometry from 2,048 to 65,536 tokens, but -44% .. +75% on toy configs whose largest
    tensors differ (benchmarks/RESULTS.md); seconds per prediction (only `eval_shape`).

`longest_input` searches the token lengths (multiples of `step`) for the longest that fits a
budget; `plan_table` is what `--mode=plan` prints. Nothing here allocates the model: parameters
and optimizer state come from `jax.eval_shape`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sener_jax import memory_terms, optim, train_step
from sener_jax.data import load_tokenizer
from sener_jax.models.sener import SenerConfig, band_logits

GIB = 1024**3
MODES = ("train", "infer")
METHODS = ("compiled", "analytic")
# SciREX with the DeBERTa-v3 tokenizer: a full 5,120-token segment holds up to ~4,000 words and
# lands in the 4,096-word bucket (benchmarks/RESULTS.md, data pipeline); 0.8 words per token
# reproduces that bucket.
DEFAULT_WORDS_PER_TOKEN = 0.8
DEFAULT_NUM_TYPES = 4  # SciREX: Method, Task, Material, Metric


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """Bytes per device. `peak` is the predictor's answer; the other fields explain it."""

    method: str
    mode: str
    n_tokens: int
    n_words: int
    batch: int
    dtype: str
    peak: int
    parts: dict[str, int]  # analytic: params/optimizer/batch/grads/activations/workspace; compiled: XLA's fields

    @property
    def peak_gib(self) -> float:
        return self.peak / GIB

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v / GIB:.3f}" for k, v in self.parts.items())
        return (f"{self.method} {self.mode} B={self.batch} N={self.n_tokens} L={self.n_words} {self.dtype}: "
                f"{self.peak_gib:.3f} GiB ({parts} GiB)")


# ----------------------------------------------------------------------------------------------
# The model a config describes, and abstract inputs
# ----------------------------------------------------------------------------------------------


def model_config_for(config: ml_collections.ConfigDict, *, dtype: str | None = None, vocab_size: int | None = None,
                     num_types: int | None = None) -> SenerConfig:
    """The SenerConfig of `config` from its own encoder fields (no checkpoint is read or downloaded:
    the configs carry the pretrained geometry, e.g. DeBERTa-v3-large in configs/base.py)."""
    if vocab_size is None:
        vocab_size = int(config.model.encoder.vocab_size)
        if vocab_size <= 0:
            vocab_size = load_tokenizer(config.data.tokenizer).vocab_size
    plain = ml_collections.ConfigDict(config.to_dict())
    plain.model.pretrained = ""
    model_config = train_step.model_config_from(plain, vocab_size, num_types or DEFAULT_NUM_TYPES)
    if dtype is not None:
        model_config = dataclasses.replace(model_config, encoder=dataclasses.replace(model_config.encoder, dtype=dtype))
    return model_config


def words_for(n_tokens: int, words_per_token: float = DEFAULT_WORDS_PER_TOKEN, base: int = 32) -> int:
    """Word bucket for a segment of `n_tokens`: ceil(words_per_token * N) rounded up to `base`."""
    return max(base, -(-math.ceil(words_per_token * n_tokens) // base) * base)


def _one_device_mesh() -> Mesh:
    return train_step.make_mesh(jax.devices()[:1])


def _bytes(tree) -> int:
    return int(sum(np.prod(x.shape, dtype=np.int64) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


@dataclasses.dataclass(frozen=True)
class _Setup:
    model_config: SenerConfig
    state: Any
    frozen: Any
    optimizer: Any
    batch: dict


def _setup(config, n_tokens: int, n_words: int, batch: int, model_config: SenerConfig) -> _Setup:
    state, frozen, optimizer = train_step.abstract_train_state(config, model_config)
    arrays = train_step.abstract_batch(batch, n_tokens, n_words, model_config.head.band_half_width, model_config.head.num_types)
    return _Setup(model_config, state, frozen, optimizer, arrays)


# ----------------------------------------------------------------------------------------------
# Predictor 1: XLA's compiled memory analysis
# ----------------------------------------------------------------------------------------------


def _infer_inputs(setup: _Setup):
    params = optim.merge_params(setup.state["trainable"], setup.frozen)
    arrays = {k: v for k, v in setup.batch.items() if k not in ("labels", "row_weight")}
    return params, arrays


def _infer_fn(model_config: SenerConfig):
    def logits(params, arrays):
        return band_logits(model_config, params, arrays["input_ids"], arrays["attention_mask"],
                           arrays["word_index"], arrays["word_mask"], deterministic=True)

    return logits


def compiled_parts(setup: _Setup, mode: str) -> dict[str, int]:
    """XLA's memory analysis of the one-device program (compiles; allocates nothing)."""
    mesh = _one_device_mesh()
    if mode == "train":
        return train_step.compiled_memory(setup.model_config, setup.optimizer, setup.state, setup.frozen,
                                          setup.batch, mesh)
    params, arrays = _infer_inputs(setup)
    lowered = jax.jit(_infer_fn(setup.model_config)).lower(
        train_step.abstract_replicated(params, mesh), train_step.abstract_on(arrays, NamedSharding(mesh, P("data")))
    )
    return train_step.memory_analysis(lowered.compile())


# ----------------------------------------------------------------------------------------------
# Predictor 2: the program's structure as named terms (sener_jax/memory_terms.py), no compilation
# ----------------------------------------------------------------------------------------------


def analytic_memory(setup: _Setup, mode: str) -> dict[str, int]:
    """Argument bytes (params, optimizer state, batch), exact, + the step's working bytes as terms."""
    trainable, frozen, state = setup.state["trainable"], setup.frozen, setup.state
    parts = {"params": _bytes(trainable) + _bytes(frozen)}
    if mode == "train":
        # Everything in the state besides the params: optimizer state, step, rng, health counters.
        parts["optimizer"] = _bytes({k: v for k, v in state.items() if k != "trainable"})
        parts["batch"] = _bytes(setup.batch)
    else:
        parts["batch"] = _bytes(_infer_inputs(setup)[1])
    batch, n_tokens = setup.batch["input_ids"].shape
    n_words = setup.batch["word_mask"].shape[1]
    terms = memory_terms.step_terms(setup.model_config, batch, n_tokens, n_words, mode, grads=_bytes(trainable))
    parts.update(terms)
    parts["peak"] = sum(v for k, v in parts.items() if k not in terms) + memory_terms.working_bytes(terms)
    return parts


# ----------------------------------------------------------------------------------------------
# The public entry points
# ----------------------------------------------------------------------------------------------


def predict_memory(
    config: ml_collections.ConfigDict,
    seq_len: int,
    batch: int,
    dtype: str | None = None,
    mode: str = "train",
    *,
    method: str = "compiled",
    n_words: int | None = None,
    num_types: int | None = None,
    vocab_size: int | None = None,
) -> MemoryReport:
    """Peak bytes per device for `batch` rows per device of `seq_len` tokens (and `n_words` words,
    default `words_for(seq_len)`), encoder compute `dtype` (default: the config's)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if seq_len < 2 or batch < 1:
        raise ValueError(f"seq_len must be >= 2 and batch >= 1, got {seq_len}, {batch}")
    model_config = model_config_for(config, dtype=dtype, vocab_size=vocab_size, num_types=num_types)
    n_words = n_words or words_for(seq_len)
    setup = _setup(config, seq_len, n_words, batch, model_config)
    parts = compiled_parts(setup, mode) if method == "compiled" else analytic_memory(setup, mode)
    peak = parts.pop("peak")
    return MemoryReport(method, mode, seq_len, n_words, batch, model_config.encoder.dtype, peak, parts)


def longest_input(
    config: ml_collections.ConfigDict,
    budget_gib: float,
    batch: int,
    dtype: str | None = None,
    mode: str = "train",
    *,
    method: str = "analytic",
    step: int = 128,
    max_tokens: int = 1 << 17,
    **kwargs,
) -> tuple[int, MemoryReport | None]:
    """(longest multiple of `step` tokens whose predicted peak fits `budget_gib`, its report).

    Memory grows monotonically with the length, so a doubling search brackets the answer and a
    bisection finds it: about 2*log2(max_tokens/step) predictions. (0, None) when even `step`
    tokens do not fit.
    """
    budget = budget_gib * GIB

    @functools.lru_cache(maxsize=None)
    def report(units: int) -> MemoryReport:
        return predict_memory(config, units * step, batch, dtype, mode, method=method, **kwargs)

    def fits(units: int) -> bool:
        return report(units).peak <= budget

    if not fits(1):
        return 0, None
    lo, hi = 1, 2
    limit = max_tokens // step
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo * step, report(lo)


def plan_table(config, *, batch: int, lengths, dtypes=("float32", "bfloat16"), methods=METHODS,
               budget_gib: float | None = None, modes=MODES) -> str:
    """Markdown table of predicted peaks per device (what `--mode=plan` prints)."""
    lines = ["| mode | dtype | tokens | words | batch/device | " + " | ".join(f"{m} (GiB)" for m in methods) + " |",
             "|---|---|---|---|---|" + "---|" * len(methods)]
    for mode in modes:
        for dtype in dtypes:
            for n in lengths:
                reports = [predict_memory(config, n, batch, dtype, mode, method=m) for m in methods]
                cells = " | ".join(f"{r.peak_gib:.3f}" for r in reports)
                lines.append(f"| {mode} | {dtype} | {n} | {reports[0].n_words} | {batch} | {cells} |")
    if budget_gib:
        lines.append("")
        for dtype in dtypes:
            n, rep = longest_input(config, budget_gib, batch, dtype, "train", method="analytic")
            lines.append(f"longest training input in {budget_gib:g} GiB ({dtype}, batch {batch}/device, analytic): "
                         f"{n} tokens" + (f" ({rep.peak_gib:.2f} GiB)" if rep else ""))
    return "\n".join(lines)
