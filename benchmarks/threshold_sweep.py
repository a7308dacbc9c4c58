"""Is `eval.threshold = 0.5` the right decision threshold? Micro F1 of exported models at a grid of thresholds.

    python benchmarks/threshold_sweep.py --export=RUN/export --split=dev=RUN_SPLITS/dev.jsonl \
        --split=test=RUN_SPLITS/test.jsonl [--thresholds=0.2,0.3,...,0.9]

For each labelled file, the band logits of every batch are computed ONCE and decoded at each threshold
(a cache keyed on the batch's input arrays), through the same `evaluate_split` as training's evaluation, so
the 0.5 column reproduces the run's eval_<split>.json. With a split named `dev`, the threshold with the best
dev F1 is reported with the other splits' F1 at it: the choice a user could make without the evaluation labels.
Output: one JSON line per export on stdout ({"export", "f1": {split: {threshold: F1}}, "forwards", "dev_pick"}).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from sener_jax.data.readers import read_documents  # noqa: E402
from sener_jax.evaluate import evaluate_split  # noqa: E402
from sener_jax.export import load_export  # noqa: E402
from sener_jax.predict import MODEL_INPUTS, make_logits_fn  # noqa: E402

_EXPORTS = flags.DEFINE_multi_string("export", None, "Exported model directory (repeatable).", required=True)
_SPLITS = flags.DEFINE_multi_string("split", None, "NAME=PATH of a labelled file (repeatable).", required=True)
_THRESHOLDS = flags.DEFINE_list("thresholds", ["0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"],
                                "Decision thresholds to decode at.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Evaluation batch size.")


def cached_logits(logits_fn):
    """logits_fn memoised on the bytes of a batch's model inputs: one forward per batch for the whole grid."""
    cache = {}

    def run(params, arrays):
        digest = hashlib.sha256()
        for k in MODEL_INPUTS:  # shapes too: two buckets must not share a key through equal bytes
            digest.update(repr(np.shape(arrays[k])).encode())
            digest.update(np.ascontiguousarray(arrays[k]).tobytes())
        key = digest.digest()
        if key not in cache:
            cache[key] = logits_fn(params, arrays)
        return cache[key]

    return run, cache


def sweep(exported, documents: dict[str, list], thresholds: list[float], batch_size: int) -> dict:
    """{"f1": {split: {threshold: micro F1}}, "forwards": {split: batches run}, "dev_pick": ...} for one export."""
    f1, forwards = {}, {}
    model_logits = make_logits_fn(exported.model_config)  # one jitted function: splits of one shape compile once
    for name, docs in documents.items():
        logits_fn, cache = cached_logits(model_logits)
        f1[name] = {}
        for threshold in thresholds:
            settings = dataclasses.replace(exported.settings, threshold=threshold)
            results = evaluate_split(logits_fn, exported.params, docs, exported.tokenizer, exported.labels,
                                     settings, exported.model_config, batch_size=batch_size, split=name)
            f1[name][threshold] = results["micro"]["f1"]
        forwards[name] = len(cache)
        cache.clear()  # band logits of a split: hundreds of MB at most; freed before the next split
    out = {"f1": f1, "forwards": forwards}
    if "dev" in f1:
        pick = max(thresholds, key=lambda t: (f1["dev"][t], -abs(t - 0.5)))  # ties: the one nearer the default
        out["dev_pick"] = {"threshold": pick, **{name: f1[name][pick] for name in f1}}
    return out


def main(argv):
    del argv
    splits = {}
    for item in _SPLITS.value:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--split expects NAME=PATH, got {item!r}")
        splits[name] = path
    thresholds = [float(t) for t in _THRESHOLDS.value]
    bad = [t for t in thresholds if not 0.0 < t < 1.0]
    if bad:
        raise SystemExit(f"--thresholds must lie in (0, 1) (sigmoid scores), got {bad}")
    documents = {name: read_documents(path) for name, path in splits.items()}
    for export_dir in _EXPORTS.value:
        result = sweep(load_export(export_dir), documents, thresholds, _BATCH.value)
        print(json.dumps({"export": export_dir, **result}), flush=True)


if __name__ == "__main__":
    app.run(main)
