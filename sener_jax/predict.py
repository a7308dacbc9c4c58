"""Text in, entities out: the `Extractor` and the document-level prediction it shares with training.

`predict_documents` is THE path from documents to document-level spans (segment -> batch ->
band logits -> decode -> merge), used both by the dev/test evaluation in `train.py` and by
`Extractor`, so what training reports is what an exported model extracts.
"""
from __future__ import annotations

import logging
import os
import pathlib
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from sener_jax.data import (
    Document,
    make_batches,
    merge_documents,
    segment_documents,
    split_words,
    word_span_to_chars,
)
from sener_jax.decode import decode_spans
# InferenceSettings is defined with the export format; `sener_jax.predict.InferenceSettings` stays the same class.
from sener_jax.export import InferenceSettings, load_export
from sener_jax.models.sener import SenerConfig, band_logits
from sener_jax.prediction_io import done_ids, read_inputs, write_predictions

logger = logging.getLogger(__name__)

LogitsFn = Callable[[Any, Mapping[str, np.ndarray]], jax.Array]
MODEL_INPUTS = ("input_ids", "attention_mask", "word_index", "word_mask")


def make_logits_fn(model_config: SenerConfig, mesh: Mesh | None = None) -> LogitsFn:
    """A jitted (params, batch arrays) -> band logits (left on the device: decoding starts there).

    With a mesh, the batch is sharded over its "data" axis (its size must divide the batch) and
    params are expected replicated on it; without one, everything runs on the default device.
    """

    @jax.jit
    def logits(params, arrays):
        return band_logits(model_config, params, *(arrays[k] for k in MODEL_INPUTS), deterministic=True)

    def run(params, arrays):
        inputs = {k: arrays[k] for k in MODEL_INPUTS}
        if mesh is not None:
            inputs = jax.device_put(inputs, NamedSharding(mesh, P("data")))
        return logits(params, inputs)

    return run


def predict_documents(
    logits_fn: LogitsFn,
    params,
    documents: Sequence[Document],
    tokenizer,
    labels: Sequence[str],
    settings: InferenceSettings,
    *,
    window: int,
    batch_size: int,
    progress: str | None = None,
) -> dict[str, list[tuple[int, int, str, float]]]:
    """{doc_id: sorted [(start_word, end_word_exclusive, label, score)]} for every document."""
    segments = segment_documents(documents, tokenizer, settings.max_tokens, settings.overlap_words)
    token_buckets, word_buckets = settings.buckets()
    batches = make_batches(segments, batch_size, tokenizer.pad_id, token_buckets, word_buckets)
    spans_by_segment: dict[int, list] = {}
    for batch in tqdm(batches, desc=progress, disable=progress is None, unit="batch", leave=False):
        logits = logits_fn(params, batch.arrays)
        word_lengths = batch.arrays["word_mask"].sum(axis=1)
        decoded = decode_spans(logits, word_lengths, window, threshold=settings.threshold)
        for segment, spans in zip(batch.segments, decoded):
            if segment is not None:
                spans_by_segment[id(segment)] = list(spans)
    merged = merge_documents(segments, [spans_by_segment[id(s)] for s in segments])
    return {
        doc.doc_id: [(int(s), int(e), labels[int(t)], float(score)) for s, e, t, score in merged.get(doc.doc_id, [])]
        for doc in documents
    }


class Extractor:
    """Entities with exact character offsets from raw text, using an exported model.

        extractor = Extractor.load("workdir/export")
        extractor.extract("Alice works at ACME.")  # [{"start", "end", "label", "text", "score"}, ...]
    """

    def __init__(self, model_config: SenerConfig, params, tokenizer, labels: Sequence[str], settings: InferenceSettings):
        self.model_config = model_config
        self.params = params
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.settings = settings
        self._logits_fn = make_logits_fn(model_config)

    @classmethod
    def load(cls, export_dir: str | os.PathLike) -> "Extractor":
        exported = load_export(export_dir)
        return cls(exported.model_config, exported.params, exported.tokenizer, exported.labels, exported.settings)

    def extract(self, text_or_texts: str | Sequence[str], batch_size: int = 8, progress: bool = False):
        """Entities of one text (a list of dicts) or of each of several texts (a list of lists).

        Each entity: {"start", "end" (character offsets, end exclusive), "label", "text"
        (== text[start:end]), "score"}, sorted by position; nested entities are kept.
        """
        single = isinstance(text_or_texts, str)
        texts = [text_or_texts] if single else text_or_texts
        if not isinstance(texts, Sequence):
            raise TypeError(f"extract expects a str or a sequence of str, got {type(texts).__name__}")
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"extract: item {index} is a {type(text).__name__}, expected str")
        documents = []
        for index, text in enumerate(texts):
            words, offsets = split_words(text)
            if words:
                documents.append(Document(str(index), words, [], text=text, word_offsets=offsets))
        predictions = (
            predict_documents(
                self._logits_fn, self.params, documents, self.tokenizer, self.labels, self.settings,
                window=self.model_config.head.band_half_width, batch_size=batch_size,
                progress="extract" if progress else None,
            )
            if documents
            else {}
        )
        by_index = {int(doc.doc_id): doc for doc in documents}
        results = []
        for index, text in enumerate(texts):
            entities = []
            for start, end, label, score in predictions.get(str(index), []):
                char_start, char_end = word_span_to_chars(by_index[index], start, end)
                entities.append(
                    {"start": char_start, "end": char_end, "label": label, "text": text[char_start:char_end], "score": score}
                )
            entities.sort(key=lambda e: (e["start"], -e["end"], e["label"]))
            results.append(entities)
        return results[0] if single else results


def predict_file(export_dir, input_path, output_path, *, batch_size: int = 8) -> int:
    """Streams a JSON-lines file ({"text", optional "id"}) through the exported model.

    Writes {"id", "entities": [...]} per input line, in input order, flushing per batch; on a
    rerun, inputs whose id is already in the output are skipped. Returns the number written.
    """
    if not input_path:
        raise ValueError("config.predict.input is empty: give a JSON-lines file with a 'text' field per line")
    items = read_inputs(input_path)
    output = pathlib.Path(output_path)
    output.parent.mkdir(parents=True, exist_ok=True)
    done = done_ids(output)
    todo = [(i, text) for i, text in items if i not in done]
    if done:
        logger.info("%s: %d of %d inputs already done, skipped", output, len(items) - len(todo), len(items))
    extractor = Extractor.load(export_dir)
    written = 0
    with open(output, "a", encoding="utf-8") as handle, tqdm(total=len(todo), desc="predict", unit="doc") as bar:
        for lo in range(0, len(todo), batch_size):
            chunk = todo[lo : lo + batch_size]
            entities = extractor.extract([text for _, text in chunk], batch_size=batch_size)
            write_predictions(handle, [item_id for item_id, _ in chunk], entities)
            written += len(chunk)
            bar.update(len(chunk))
    return written
