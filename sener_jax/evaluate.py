"""Evaluation of a run's params: decode -> merge -> document-level P/R/F1 (SPEC section 9)."""
from __future__ import annotations

import json
import pathlib

from sener_jax import distributed, metrics
from sener_jax.models.sener import SenerConfig
from sener_jax.predict import InferenceSettings, predict_documents
from sener_jax.run_setup import RunSetup
from sener_jax.train_guard import require_finite


def evaluate_split(
    logits_fn, params, documents, tokenizer, labels, settings: InferenceSettings, model_config: SenerConfig,
    *, batch_size: int, split: str, max_buckets: int = 0,
) -> dict:
    """Document-level micro and per-type P/R/F1 on `documents` (gold: every entity, SPEC section 9).
    NonFiniteParamsError for params with NaN/inf (all-NaN logits would decode to F1 0, not an error)."""
    require_finite(params, f"to evaluate on {split}")
    predicted = predict_documents(
        logits_fn, params, documents, tokenizer, labels, settings,
        window=model_config.head.band_half_width, batch_size=batch_size, progress=f"eval {split}",
        max_buckets=max_buckets,
    )
    gold = {d.doc_id: [(e.start, e.end, e.label) for e in d.entities] for d in documents}
    results = metrics.evaluate_entities(gold, predicted, max_span_words=model_config.head.max_span_words)
    results["split"] = split
    return results


def eval_batch_size(config, split: str) -> int:
    """`eval.<split>_batch_size` when set (> 0; the authors evaluate dev in 2s, test in 4s), else eval.batch_size."""
    return int(config.eval.get(f"{split}_batch_size", 0) or config.eval.batch_size)


def write_eval(workdir: pathlib.Path, split: str, results: dict) -> None:
    path = workdir / f"eval_{split}.json"
    path.write_text(json.dumps(results, indent=2, sort_keys=True))
    print(metrics.format_table(results, title=f"== {split}: {results['documents']} documents ({path}) =="), flush=True)


def evaluate_and_write(run: RunSetup, logits_fn, params) -> dict:
    """Evaluates every configured split that has documents; writes WORKDIR/eval_<split>.json."""
    results = {}
    for split in run.config.eval.splits:
        if split in run.data.splits:
            results[split] = evaluate_split(
                logits_fn, params, run.data.splits[split], run.data.tokenizer, run.data.labels, run.settings,
                run.model_config, batch_size=eval_batch_size(run.config, split), split=split,
                max_buckets=run.config.data.get("max_buckets", 0),
            )
            if distributed.is_primary():
                write_eval(run.workdir, split, results[split])
    return results
