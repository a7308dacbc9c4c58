"""Text in, entities out: the `Extractor` and the document-level prediction it shares with training.

`predict_documents` is THE path from documents to document-level spans (segment -> batch ->
band logits -> decode -> merge), used both by the dev/test evaluation in `train.py` and by
`Extractor`, so what training reports is what an exported model extracts.
"""
from __future__ import annotations

import itertools
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
from sener_jax.export import InferenceSettings, export_digest, load_export
from sener_jax.models.sener import SenerConfig, band_logits
from sener_jax.prediction_io import (
    PredictionFileError,
    iter_inputs,
    iter_predictions,
    make_header,
    prepare_output,
    scan_inputs,
    text_error,
    write_predictions,
)
from sener_jax.render import check_report_path

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
    max_buckets: int = 0,
) -> dict[str, list[tuple[int, int, str, float]]]:
    """{doc_id: sorted [(start_word, end_word_exclusive, label, score)]} for every document.

    `max_buckets` > 0: at most that many batch shapes chosen from these documents' lengths
    (`data.bucket_plan`; for a fixed split evaluated every epoch); 0: the settings' fixed buckets.
    """
    segments = segment_documents(documents, tokenizer, settings.max_tokens, settings.overlap_words,
                                 settings.segmentation)
    token_buckets, word_buckets = settings.buckets()
    batches = make_batches(segments, batch_size, tokenizer.pad_id, token_buckets, word_buckets,
                           bucket_plan=settings.bucket_plan(segments, max_buckets),
                           bucketing=settings.batching == "buckets")
    spans_by_segment: dict[int, list] = {}
    for batch in tqdm(batches, desc=progress, disable=progress is None, unit="batch", leave=False):
        logits = logits_fn(params, batch.arrays)
        word_lengths = batch.arrays["word_mask"].sum(axis=1)
        decoded = decode_spans(logits, word_lengths, window, threshold=settings.threshold,
                               boundary_word_crosses=settings.boundary_word_crosses)
        for segment, spans in zip(batch.segments, decoded):
            if segment is not None:
                spans_by_segment[id(segment)] = list(spans)
    merged = merge_documents(segments, [spans_by_segment[id(s)] for s in segments], settings.merge)
    return {
        doc.doc_id: [(int(s), int(e), labels[int(t)], float(score)) for s, e, t, score in merged.get(doc.doc_id, [])]
        for doc in documents
    }


class Extractor:
    """Entities with exact character offsets from raw text, using an exported model.

        extractor = Extractor.load("workdir/export")
        extractor.extract("Alice works at ACME.")  # [{"start", "end", "label", "text", "score"}, ...]
    """

    def __init__(self, model_config: SenerConfig, params, tokenizer, labels: Sequence[str], settings: InferenceSettings,
                 digest: str = ""):
        self.digest = digest  # the export's manifest sha256 (empty when not loaded from an export)
        self.model_config = model_config
        self.params = params
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.settings = settings
        self._logits_fn = make_logits_fn(model_config)

    @classmethod
    def load(cls, export_dir: str | os.PathLike) -> "Extractor":
        exported = load_export(export_dir)
        return cls(exported.model_config, exported.params, exported.tokenizer, exported.labels, exported.settings,
                   exported.digest)

    def extract(self, text_or_texts: str | Sequence[str], batch_size: int = 8, progress: bool = False):
        """Entities of one text (a list of dicts) or of each of several texts (a list of lists).

        Each entity: {"start", "end" (character offsets, end exclusive), "label", "text"
        (== text[start:end]), "score"}, sorted by position; nested entities are kept.
        """
        check_batch_size(batch_size, "batch_size")
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


def check_batch_size(batch_size, name: str = "predict.batch_size") -> int:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"{name} must be an int >= 1, got {batch_size!r}")
    return batch_size


def _same_file(a: pathlib.Path, b: pathlib.Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)  # hard links


def predict_file(export_dir, input_path, output_path, *, batch_size: int = 8, overwrite: bool = False,
                 report_path=None) -> int:
    """Streams a JSON-lines file ({"text", optional "id"}) through the exported model.

    Writes a header (which input, which export) and then {"id", "entities": [...]} per input
    line, in input order, flushing per batch (file format: `sener_jax.prediction_io`). A rerun
    with the same input and export continues after the last complete record; another input or
    export is an error unless `overwrite`. A file that is not a predictions file of ours is never
    touched. `report_path`, when given, is checked up front (not the input or the output, not a
    foreign file) so that the report written after the run cannot fail on it. Returns the number
    of records written by this call.
    """
    check_batch_size(batch_size)
    if not input_path:
        raise ValueError("config.predict.input is empty: give a JSON-lines file with a 'text' field per line")
    input_path, output = pathlib.Path(input_path), pathlib.Path(output_path)
    if not input_path.is_file():
        raise FileNotFoundError(f"predict.input {input_path}: no such file")
    if _same_file(input_path, output):
        raise ValueError(f"predict.output {output} is the input file itself; choose another predict.output")
    if report_path is not None:
        check_report_path(report_path, output, input_path)
    total = scan_inputs(input_path)  # every line valid and ids unique before anything is written
    header = make_header(input_path, export_dir, export_digest(export_dir))
    done = prepare_output(output, header, overwrite=overwrite)
    extractor = Extractor.load(export_dir)
    if extractor.digest != header["export"]["manifest_sha256"]:
        raise RuntimeError(f"{export_dir}: the export changed while predict started; run again")
    inputs = iter_inputs(input_path)
    # The output holds the first `done` inputs, in order: check that they are these inputs.
    for (line_no, item_id, _), (out_line, record) in zip(itertools.islice(inputs, done), iter_predictions(output)):
        if str(record["id"]) != item_id:
            raise PredictionFileError(
                f"{output}:{out_line}: id {record['id']!r}, but {input_path}:{line_no} has id {item_id!r}; "
                "set predict.overwrite=True to start the file over"
            )
    if done:
        logger.info("%s: %d of %d inputs already done, skipped", output, done, total)
    written = 0
    with open(output, "a", encoding="utf-8") as handle, tqdm(total=total - done, desc="predict", unit="doc") as bar:
        while chunk := list(itertools.islice(inputs, batch_size)):
            errors = [text_error(text) for _, _, text in chunk]
            good = [text for (_, _, text), error in zip(chunk, errors) if error is None]
            found = iter(extractor.extract(good, batch_size=batch_size) if good else [])
            entities = [[] if error is not None else next(found) for error in errors]
            write_predictions(handle, [item_id for _, item_id, _ in chunk], entities, errors)
            written += len(chunk)
            bar.update(len(chunk))
    return written
