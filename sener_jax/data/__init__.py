"""Documents in, batches out: readers, tokenizers, segments, band labels, merging, masking, batches.

Data flows one way: files -> Document -> Segment -> Batch; predicted segment spans -> merge ->
document spans -> (raw text) character offsets. Nothing here imports the model.
"""
from sener_jax.data.batching import (
    Batch,
    BatchIterator,
    MaskingConfig,
    bucket_for,
    collate,
    length_buckets,
    make_batches,
)
from sener_jax.data.documents import Document, Entity, label_set, split_words, word_span_to_chars
from sener_jax.data.labels import band_labels, is_representable, spans_from_band
from sener_jax.data.masking import select_whole_words, whole_word_mask
from sener_jax.data.merge import merge_documents, merge_segments
from sener_jax.data.readers import (
    DataFileError,
    DataIssue,
    DocumentError,
    DocumentList,
    document_from_text,
    document_to_chars_record,
    read_documents,
    write_jsonl,
)
from sener_jax.data.splits import SPLITS, DataBundle, load_data, split_by_order, write_synthetic_data
from sener_jax.data.segment import Segment, segment_document, segment_documents, word_windows
from sener_jax.data.synthetic import (
    PRESETS as SYNTHETIC_PRESETS,
    SYNTHETIC_LABELS,
    generate_documents,
    write_synthetic_dataset,
)
from sener_jax.data.tokenizer import SyntheticTokenizer, Tokenizer, load_tokenizer

__all__ = [
    "Batch",
    "BatchIterator",
    "DataBundle",
    "DataFileError",
    "DataIssue",
    "DocumentError",
    "Document",
    "DocumentList",
    "Entity",
    "MaskingConfig",
    "SYNTHETIC_LABELS",
    "SYNTHETIC_PRESETS",
    "SPLITS",
    "Segment",
    "SyntheticTokenizer",
    "Tokenizer",
    "band_labels",
    "bucket_for",
    "collate",
    "document_from_text",
    "document_to_chars_record",
    "generate_documents",
    "is_representable",
    "label_set",
    "length_buckets",
    "load_data",
    "load_tokenizer",
    "make_batches",
    "merge_documents",
    "merge_segments",
    "read_documents",
    "segment_document",
    "segment_documents",
    "select_whole_words",
    "spans_from_band",
    "split_by_order",
    "split_words",
    "whole_word_mask",
    "word_span_to_chars",
    "word_windows",
    "write_jsonl",
    "write_synthetic_data",
    "write_synthetic_dataset",
]
