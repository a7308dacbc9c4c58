"""The paper's Table-3 ablations as named overrides of one base config, their dev F1 and memory.

    base = load_config("configs/demo.py:tiny")
    f1 = run_variants(base, "/tmp/ablations")               # {variant: {"f1", "precision", "recall", ...}}
    mem = memory_sweep(base, lengths=(128, 256), budget_bytes=2**30)   # one row per (variant, length)

Every variant is `sener_base(base)` (SeNER's own choices pinned explicitly, so that a base whose
file happens to differ, e.g. the demo's full fine-tuning, still starts from SeNER) plus a few
dotted-key overrides (`VARIANTS`). Memory is the peak of the COMPILED training step (XLA's own
buffer assignment, `train_step.compiled_memory`), per device, for a batch of `batch_size` rows of
`n_tokens` tokens and `n_tokens - 2` words (the most words a segment of that length can hold).
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import pathlib
from typing import Iterable, Mapping

import ml_collections

from sener_jax import memory, train
from sener_jax.data import load_tokenizer

# SeNER's choices (SPEC sections 1-8), pinned on the base before any variant applies its overrides.
SENER_SETTINGS: dict[str, object] = {
    "model.encoder.attention": "arrow",
    "model.encoder.logn": True,
    "model.head.use_bispa": True,
    "model.head.bispa_alignment": "original",
    "train.finetune": "lora",
}
DEFAULT_LORA_RANK = 8  # used when the base has no LoRA (lora_rank == 0) but SeNER needs one
DEFAULT_BISPA_BLOCKS = 1  # used when the base head has no BiSPA block (the demo's); paper configs carry 2
DEFAULT_MASK_PROBABILITY = 0.15

# Table 3 of the paper, plus the BiSPA alignment choice (SPEC section 4.4).
VARIANTS: dict[str, dict[str, object]] = {
    "SeNER": {},
    "w/o arrow (full attention)": {"model.encoder.attention": "full"},
    "w/o LogN": {"model.encoder.logn": False},
    "sliding window instead of arrow": {"model.encoder.attention": "sliding"},
    "w/o BiSPA": {"model.head.use_bispa": False},
    "w/o LoRA (full fine-tuning)": {"train.finetune": "full", "model.encoder.lora_rank": 0},
    "w/o whole-word masking": {"data.mask_probability": 0.0},
    "BiSPA alignment plus": {"model.head.bispa_alignment": "plus"},
}


def load_config(spec: str) -> ml_collections.ConfigDict:
    """A config from "path/to/config.py[:arg]" (the same syntax as `--config=` on the command line)."""
    path, _, arg = spec.partition(":")
    file = pathlib.Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file {path!r} not found (expected e.g. 'configs/demo.py:tiny')")
    module_spec = importlib.util.spec_from_file_location(f"_sener_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path!r} defines no get_config(arg=None)")
    return module.get_config(arg or None)


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, object]) -> ml_collections.ConfigDict:
    """A copy of `config` with dotted keys set; an unknown key is an error naming it."""
    config = copy.deepcopy(config)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            if part not in node:
                raise KeyError(f"override {key!r}: the config has no field {part!r}")
            node = node[part]
        if leaf not in node:
            raise KeyError(f"override {key!r}: the config has no field {leaf!r}")
        node[leaf] = value
    return config


def sener_base(base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`base` with SeNER's choices pinned (arrow attention, LogN, BiSPA 'original' with at least one
    block, LoRA, whole-word masking): without them some variants would silently equal SeNER."""
    settings = dict(SENER_SETTINGS)
    if base.model.head.num_blocks <= 0:
        settings["model.head.num_blocks"] = DEFAULT_BISPA_BLOCKS
    if base.model.encoder.lora_rank <= 0:
        settings["model.encoder.lora_rank"] = DEFAULT_LORA_RANK
    if base.data.mask_probability <= 0:
        settings["data.mask_probability"] = DEFAULT_MASK_PROBABILITY
    return apply_overrides(base, settings)


def variant_config(base: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    if name not in VARIANTS:
        raise KeyError(f"unknown ablation variant {name!r}; known: {list(VARIANTS)}")
    return apply_overrides(sener_base(base), VARIANTS[name])


def variant_dirname(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


# ----------------------------------------------------------------------------------------------
# Dev F1
# ----------------------------------------------------------------------------------------------


def run_variants(
    base: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    variants: Iterable[str] | None = None,
    *,
    dev_only: bool = True,
) -> dict[str, dict]:
    """Trains every variant with `train_and_evaluate` (WORKDIR/<variant>/, resumable) and returns
    {variant: dev micro scores {"precision", "recall", "f1", "tp", "predicted", "gold"}}.

    With `dev_only` (the default) a run evaluates only the dev split and writes no export: the
    ablation compares dev F1, and each skipped step saves minutes on a large model.
    """
    workdir = pathlib.Path(workdir)
    results = {}
    for name in variants if variants is not None else VARIANTS:
        config = variant_config(base, name)
        if dev_only:
            config.eval.splits = ("dev",)
            config.train.export = False
        outcome = train.train_and_evaluate(config, workdir / variant_dirname(name))
        if "dev" not in outcome:
            raise ValueError(f"variant {name!r}: the run has no dev split to score (eval.splits={tuple(config.eval.splits)})")
        results[name] = dict(outcome["dev"]["micro"])
    (workdir / "ablation_f1.json").write_text(json.dumps(results, indent=2))
    return results


# ----------------------------------------------------------------------------------------------
# Peak compiled memory
# ----------------------------------------------------------------------------------------------


def train_step_peak_bytes(config: ml_collections.ConfigDict, n_tokens: int, *, batch_size: int = 1,
                          vocab_size: int = 128100, num_types: int = 4, method: str = "compiled") -> int:
    """Peak memory of one training step of `config` on one device, for `batch_size` rows of
    `n_tokens` tokens and `n_tokens - 2` words; nothing is allocated. "compiled" lowers and compiles
    the real step (`train_step.compiled_memory`); "analytic" counts without compiling (much faster on
    a CPU, an estimate). Both through `memory.predict_memory`, which ignores `model.pretrained` (the
    geometry is in the config; no checkpoint is downloaded to measure)."""
    if n_tokens < 3:
        raise ValueError(f"n_tokens={n_tokens}: a segment needs at least [CLS], one word and [SEP]")
    if method not in memory.METHODS:
        raise ValueError(f"memory method must be 'compiled' or 'analytic', got {method!r}")
    return int(memory.predict_memory(config, n_tokens, batch_size, mode="train", method=method,
                                     n_words=n_tokens - 2, num_types=num_types, vocab_size=vocab_size).peak)


@dataclasses.dataclass(frozen=True)
class MemoryRow:
    variant: str
    n_tokens: int
    peak_bytes: int | None  # None: not measured (a shorter length already exceeded the budget)
    over_budget: bool


def _vocab_size(config: ml_collections.ConfigDict) -> int:
    """The encoder's vocabulary: the config's, or (0 = "the tokenizer's") the tokenizer's."""
    if config.model.encoder.vocab_size > 0:
        return int(config.model.encoder.vocab_size)
    return int(load_tokenizer(config.data.tokenizer).vocab_size)


def _memory_key(config: ml_collections.ConfigDict) -> str:
    # Variants that compile to the same step (e.g. whole-word masking is host-side) share a measurement.
    return json.dumps({"model": config.model.to_dict(), "finetune": config.train.finetune,
                       "train": {k: config.train[k] for k in ("weight_decay", "grad_clip_norm")}},
                      sort_keys=True, default=str)


def memory_sweep(
    base: ml_collections.ConfigDict,
    lengths: Iterable[int],
    *,
    budget_bytes: int | None = None,
    variants: Iterable[str] | None = None,
    batch_size: int = 1,
    vocab_size: int | None = None,
    num_types: int = 4,
    method: str = "compiled",
    skip_after_over_budget: bool = True,
) -> list[MemoryRow]:
    """Peak compiled training memory per variant and input length (tokens), marking where it exceeds
    `budget_bytes`. Once a variant is over budget, longer lengths are not compiled (they would
    only be bigger) unless `skip_after_over_budget=False`.

    `vocab_size` defaults to the config's, or the tokenizer's when the config says 0: the
    embedding table (and, in full fine-tuning, its optimizer state) is part of the memory.
    """
    lengths = sorted(set(int(n) for n in lengths))
    cache: dict[tuple[str, int], int] = {}
    rows = []
    for name in variants if variants is not None else VARIANTS:
        config = variant_config(base, name)
        vocab = vocab_size or _vocab_size(config)
        key = _memory_key(config)
        exceeded = False
        for n_tokens in lengths:
            if exceeded and skip_after_over_budget:
                rows.append(MemoryRow(name, n_tokens, None, True))
                continue
            if (key, n_tokens) not in cache:
                cache[key, n_tokens] = train_step_peak_bytes(
                    config, n_tokens, batch_size=batch_size, vocab_size=vocab, num_types=num_types, method=method
                )
            peak = cache[key, n_tokens]
            exceeded = budget_bytes is not None and peak > budget_bytes
            rows.append(MemoryRow(name, n_tokens, peak, exceeded))
    return rows


def max_length_within_budget(rows: Iterable[MemoryRow]) -> dict[str, int | None]:
    """{variant: the longest measured length that fits the budget (None: not even the shortest)}."""
    best: dict[str, int | None] = {}
    for row in rows:
        best.setdefault(row.variant, None)
        if row.peak_bytes is not None and not row.over_budget:
            best[row.variant] = max(best[row.variant] or 0, row.n_tokens)
    return best


# ----------------------------------------------------------------------------------------------
# Tables (markdown: readable in a notebook, in a terminal and in benchmarks/RESULTS.md)
# ----------------------------------------------------------------------------------------------


def f1_table(results: Mapping[str, Mapping]) -> str:
    """Markdown: one row per variant with dev P/R/F1 (in %) and the F1 difference to SeNER."""
    reference = results.get("SeNER", {}).get("f1")
    lines = ["| variant | dev P | dev R | dev F1 | F1 vs SeNER |", "|---|---:|---:|---:|---:|"]
    for name, r in results.items():
        delta = "" if reference is None or name == "SeNER" else f"{100 * (r['f1'] - reference):+.2f}"
        lines.append(f"| {name} | {100 * r['precision']:.2f} | {100 * r['recall']:.2f} | {100 * r['f1']:.2f} | {delta} |")
    return "\n".join(lines)


def memory_table(rows: Iterable[MemoryRow], budget_bytes: int | None = None) -> str:
    """Markdown: variants as rows, input lengths as columns, peak MiB; over budget marked "> budget"."""
    rows = list(rows)
    lengths = sorted({r.n_tokens for r in rows})
    cells: dict[str, dict[int, str]] = {}
    for r in rows:
        if r.peak_bytes is None:
            text = "> budget"
        else:
            text = f"{r.peak_bytes / 2**20:.1f}" + (" (> budget)" if r.over_budget else "")
        cells.setdefault(r.variant, {})[r.n_tokens] = text
    title = "peak MiB per device" + (f", budget {budget_bytes / 2**20:.1f} MiB" if budget_bytes else "")
    lines = [f"| variant ({title}) | " + " | ".join(f"N={n}" for n in lengths) + " |",
             "|---|" + "---:|" * len(lengths)]
    for name, by_length in cells.items():
        lines.append(f"| {name} | " + " | ".join(by_length.get(n, "") for n in lengths) + " |")
    return "\n".join(lines)
