"""Masked-language-model targets for a padded batch: whole words (or spans of whole words) chosen,
corrupted by the 80/10/10 rule, and their positions gathered so the vocabulary projection runs only
on predicted tokens (128k-way logits for every token would dominate the step).

`span_words = 1` is exactly `masking.select_whole_words` (the fine-tuning corruption); `k > 1`
draws spans of 1..k consecutive whole words (uniform length) at random starts until the row's
token budget `round(fraction * tokens)` is reached, never exceeding it after the first span.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from sener_jax.data.masking import corrupt_selected, select_per_row, select_whole_words


@dataclasses.dataclass(frozen=True)
class MlmSpec:
    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...]
    fraction: float = 0.15
    span_words: int = 1
    mask_token: float = 0.8
    random_token: float = 0.1

    def __post_init__(self):
        if not 0 < self.fraction < 1:
            raise ValueError(f"pretrain.mask_probability must be in (0, 1), got {self.fraction}")
        if self.span_words < 1:
            raise ValueError(f"pretrain.span_words must be >= 1, got {self.span_words}")

    def max_predictions(self, n_tokens: int) -> int:
        """Gathered positions per row for a token bucket of `n_tokens`: the budget plus room for a
        first word/span longer than it (rows with more selected tokens are trimmed, see below)."""
        return min(n_tokens, math.ceil(self.fraction * n_tokens) + 8)


def select_word_spans(word_index: np.ndarray, rng: np.random.Generator, fraction: float, span_words: int) -> np.ndarray:
    """Bool (B, N): tokens of spans of 1..`span_words` consecutive whole words per row."""
    if span_words == 1:
        return select_whole_words(word_index, rng, fraction)

    def spans_to_budget(counts: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
        chosen = np.zeros(counts.shape[0], dtype=bool)
        taken = 0
        for _ in range(4 * len(counts)):  # bounded: overlapping draws add nothing
            length = int(rng.integers(1, span_words + 1))
            start = int(rng.integers(0, len(counts)))
            span = np.arange(start, min(start + length, len(counts)))
            new = span[~chosen[span]]
            extra = int(counts[new].sum())
            if taken and taken + extra > target:
                break
            chosen[new] = True
            taken += extra
            if taken >= target:
                break
        return chosen

    return select_per_row(word_index, rng, fraction, spans_to_budget)


def mlm_arrays(input_ids: np.ndarray, word_index: np.ndarray, rng: np.random.Generator, spec: MlmSpec) -> dict:
    """{"input_ids" (corrupted), "mlm_positions" (B, P) int32, "mlm_targets" (B, P) int32,
    "mlm_weights" (B, P) float32}: P = spec.max_predictions(N); weight 0 marks padding slots.

    A row whose selection exceeds P keeps its first P selected tokens (the rest stay uncorrupted).
    """
    input_ids = np.asarray(input_ids)
    selected = select_word_spans(np.asarray(word_index), rng, spec.fraction, spec.span_words)
    rows, n_tokens = input_ids.shape
    slots = spec.max_predictions(n_tokens)
    positions = np.zeros((rows, slots), np.int32)
    weights = np.zeros((rows, slots), np.float32)
    for b in range(rows):
        where = np.nonzero(selected[b])[0]
        selected[b, where[slots:]] = False
        where = where[:slots]
        positions[b, : len(where)] = where
        weights[b, : len(where)] = 1.0
    targets = np.take_along_axis(input_ids, positions, axis=1).astype(np.int32)
    corrupted = corrupt_selected(input_ids, selected, rng, spec.mask_id, spec.vocab_size, spec.special_ids,
                                 spec.mask_token, spec.random_token)
    return {"input_ids": corrupted, "mlm_positions": positions, "mlm_targets": targets, "mlm_weights": weights}
