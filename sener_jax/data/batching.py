"""Segments -> fixed-shape numpy batches, in a handful of length buckets.

Each segment goes to the smallest token bucket N >= its token count and word bucket L >= its word
count; a batch holds segments of one (N, L) bucket, padded to exactly `batch_size` rows (padding
rows have an all-False word mask), so a whole dataset compiles one program per bucket pair used.

Arrays (as the model expects them): `input_ids` int32 (B, N), `attention_mask` int32 (B, N),
`word_index` int32 (B, N) (local word per token, -1 for [CLS]/[SEP]/padding), `word_mask` bool
(B, L), and with labels either `labels` uint8 (B, L, 2w+1, R) (label_format "dense", the
reference) or `label_spans` int32 (B, C, 3) (label_format "spans": a few KB, the dense targets are
built on the device, see `label_spans`; C is fixed per bucket). Host-side metadata (which segment each
row is) lives in `Batch.segments`, never in the arrays.

`BatchIterator` shuffles with a seed per epoch, yields each host its slice of every global batch
(`shard`), and its position is a small dict (`state()` / `restore(state)`) for exact resume.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Iterator, Mapping, Sequence

import numpy as np

from sener_jax.data.bucket_plan import BucketPlan
from sener_jax.data.label_spans import pack_spans, representable_count, round_capacity, row_spans
from sener_jax.data.labels import band_labels, is_representable
from sener_jax.data.masking import whole_word_mask
from sener_jax.data.segment import Segment

logger = logging.getLogger(__name__)


def length_buckets(max_len: int, base: int) -> tuple[int, ...]:
    """`base * 2**k` below `max_len`, then `max_len` itself: (64, 128, 256, 300) for (300, 64)."""
    if max_len < 1 or base < 1:
        raise ValueError(f"max_len and base must be >= 1, got {max_len}, {base}")
    buckets = []
    size = base
    while size < max_len:
        buckets.append(size)
        size *= 2
    buckets.append(max_len)
    return tuple(buckets)


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    for size in buckets:
        if length <= size:
            return size
    raise ValueError(f"length {length} exceeds the largest bucket {buckets[-1]}")


@dataclasses.dataclass
class Batch:
    """Device arrays plus host-only metadata: `segments[b]` is row b's segment, None for padding."""

    arrays: dict[str, np.ndarray]
    segments: list[Segment | None]

    @property
    def row_valid(self) -> np.ndarray:
        return np.array([s is not None for s in self.segments], dtype=bool)


def collate(
    segments: Sequence[Segment | None],
    n_tokens: int,
    n_words: int,
    pad_id: int,
    window: int | None = None,
    label_to_id: Mapping[str, int] | None = None,
    num_types: int | None = None,
    label_capacity: int | None = None,
) -> Batch:
    """Pad `segments` (None = an empty padding row) into one batch of shape (len, n_tokens / n_words).

    Labels are built when `label_to_id` is given (entities longer than window + 1 words are left
    out: they cannot be represented; `coverage` reports them): dense `labels`, or with
    `label_capacity` sparse `label_spans` of that capacity per row.
    """
    rows = len(segments)
    input_ids = np.full((rows, n_tokens), pad_id, dtype=np.int32)
    attention_mask = np.zeros((rows, n_tokens), dtype=np.int32)
    word_index = np.full((rows, n_tokens), -1, dtype=np.int32)
    word_mask = np.zeros((rows, n_words), dtype=bool)
    with_labels = label_to_id is not None
    if with_labels:
        if window is None:
            raise ValueError("window is required to build labels")
        if num_types is None:
            num_types = max(label_to_id.values(), default=-1) + 1
        if label_capacity is None:
            labels = np.zeros((rows, n_words, 2 * window + 1, num_types), dtype=np.uint8)
        else:
            spans: list = [None] * rows
    for b, seg in enumerate(segments):
        if seg is None:
            continue
        t, w = seg.n_tokens, seg.n_words
        if t > n_tokens or w > n_words:
            raise ValueError(f"segment of {t} tokens / {w} words does not fit a ({n_tokens}, {n_words}) batch")
        input_ids[b, :t] = seg.input_ids
        attention_mask[b, :t] = 1
        word_index[b, :t] = seg.token_word
        word_mask[b, :w] = True
        if with_labels and label_capacity is not None:
            spans[b] = row_spans(seg.entities, w, window, label_to_id, num_types)
        elif with_labels:
            band_labels(seg.entities, w, window, label_to_id, num_types=num_types,
                        skip_unrepresentable=True, out=labels[b, :w])
    arrays = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "word_index": word_index,
        "word_mask": word_mask,
    }
    if with_labels and label_capacity is not None:
        arrays["label_spans"] = pack_spans(spans, label_capacity, [s and s.doc_id for s in segments])
    elif with_labels:
        arrays["labels"] = labels
    return Batch(arrays, list(segments))


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
    """Whole-word masking applied by the iterator (training only); see `masking.whole_word_mask`."""

    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...]
    fraction: float = 0.15


class BatchIterator:
    """Bucketed, padded, optionally shuffled batches over segments, with a resumable position.

    One epoch is a deterministic plan from `(seed, epoch)`: segments grouped by bucket, shuffled
    within each bucket, cut into global batches of `batch_size`, the batches shuffled. The
    iterator's position is `state() = {"epoch", "position", "seed"}`; `restore(state)` on a
    fresh iterator over the same segments continues exactly (masking included, which is seeded
    by the position too). `num_epochs=None` repeats forever. `label_format`: "dense" (the host
    reference) or "spans" (capacity per bucket: the most representable entities of any of its
    segments, rounded up, so it is fixed for the whole run).
    """

    def __init__(
        self,
        segments: Sequence[Segment],
        batch_size: int,
        pad_id: int,
        token_buckets: Sequence[int],
        word_buckets: Sequence[int],
        window: int | None = None,
        label_to_id: Mapping[str, int] | None = None,
        num_types: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
        num_epochs: int | None = 1,
        masking: MaskingConfig | None = None,
        process_index: int = 0,
        process_count: int = 1,
        label_format: str = "dense",
        bucket_plan: BucketPlan | None = None,
    ) -> None:
        if label_format not in ("dense", "spans"):
            raise ValueError(f"label_format must be 'dense' or 'spans', got {label_format!r}")
        if batch_size < 1 or batch_size % process_count:
            raise ValueError(f"batch_size {batch_size} must be a positive multiple of process_count {process_count}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
        self.segments = list(segments)
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.token_buckets = tuple(sorted(token_buckets))
        self.word_buckets = tuple(sorted(word_buckets))
        self.window = window
        self.label_to_id = label_to_id
        self.num_types = num_types
        self.shuffle = shuffle
        self.seed = int(seed)
        self.num_epochs = num_epochs
        self.masking = masking
        self.process_index = process_index
        self.process_count = process_count
        self.label_format = label_format
        self.bucket_plan = bucket_plan
        self.epoch = 0
        self.position = 0
        self._plan_cache: tuple[int, list] | None = None
        if bucket_plan is not None:  # shapes chosen from the data (`bucket_plan`), else the fixed buckets
            self._keys = [bucket_plan.shape_for(s.n_tokens, max(s.n_words, 1)) for s in self.segments]
        else:
            self._keys = [
                (bucket_for(s.n_tokens, self.token_buckets), bucket_for(max(s.n_words, 1), self.word_buckets))
                for s in self.segments
            ]
        self.label_capacity: dict[tuple[int, int], int] = {}
        if label_format == "spans" and label_to_id is not None and window is not None:
            for key, seg in zip(self._keys, self.segments):
                count = round_capacity(representable_count(seg, window))
                self.label_capacity[key] = max(self.label_capacity.get(key, 0), count)
        if label_to_id is not None and window is not None:
            too_long = sum(not is_representable(e.start, e.end, window) for s in self.segments for e in s.entities)
            if too_long:
                logger.warning("%d gold entities are longer than window + 1 = %d words: left out of the labels",
                               too_long, window + 1)

    # -- planning -------------------------------------------------------------------------------
    def bucket_shapes(self) -> list[tuple[int, int]]:
        """The distinct (N, L) shapes this iterator produces (one compiled program each)."""
        return sorted(set(self._keys))

    def epoch_plan(self, epoch: int) -> list[tuple[tuple[int, int], list[int]]]:
        """The global batches of `epoch`: ((N, L), segment indices), in order."""
        if self._plan_cache is not None and self._plan_cache[0] == epoch:
            return self._plan_cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        groups: dict[tuple[int, int], list[int]] = {}
        for index, key in enumerate(self._keys):
            groups.setdefault(key, []).append(index)
        plan = []
        for key in sorted(groups):
            members = groups[key]
            if self.shuffle:
                members = [members[i] for i in rng.permutation(len(members))]
            for lo in range(0, len(members), self.batch_size):
                plan.append((key, members[lo : lo + self.batch_size]))
        if self.shuffle:
            plan = [plan[i] for i in rng.permutation(len(plan))]
        self._plan_cache = (epoch, plan)
        return plan

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self.epoch_plan(self.epoch))

    # -- position -------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def restore(self, state: Mapping) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"state field 'seed': saved with seed {state['seed']}, this iterator has {self.seed}")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])

    def shard(self, process_index: int, process_count: int) -> "BatchIterator":
        """A copy (same position) that yields host `process_index`'s rows of every global batch."""
        clone = BatchIterator(
            self.segments, self.batch_size, self.pad_id, self.token_buckets, self.word_buckets,
            window=self.window, label_to_id=self.label_to_id, num_types=self.num_types,
            shuffle=self.shuffle, seed=self.seed, num_epochs=self.num_epochs, masking=self.masking,
            process_index=process_index, process_count=process_count, label_format=self.label_format,
            bucket_plan=self.bucket_plan,
        )
        clone.restore(self.state())
        return clone

    # -- iteration ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        while True:
            if self.num_epochs is not None and self.epoch >= self.num_epochs:
                raise StopIteration
            plan = self.epoch_plan(self.epoch)
            if self.position < len(plan):
                break
            if not plan:
                raise StopIteration
            self.epoch, self.position = self.epoch + 1, 0
        (n_tokens, n_words), members = plan[self.position]
        rows: list[Segment | None] = [self.segments[i] for i in members]
        rows += [None] * (self.batch_size - len(rows))
        per_host = self.batch_size // self.process_count
        rows = rows[self.process_index * per_host : (self.process_index + 1) * per_host]
        batch = collate(rows, n_tokens, n_words, self.pad_id, self.window, self.label_to_id, self.num_types,
                        label_capacity=self.label_capacity.get((n_tokens, n_words)))
        if self.masking is not None:
            rng = np.random.default_rng([self.seed, self.epoch, self.position, self.process_index, 1])
            m = self.masking
            batch.arrays["input_ids"] = whole_word_mask(
                batch.arrays["input_ids"], batch.arrays["word_index"], rng,
                mask_id=m.mask_id, vocab_size=m.vocab_size, special_ids=m.special_ids, fraction=m.fraction,
            )
        self.position += 1
        return batch


def make_batches(segments: Sequence[Segment], batch_size: int, pad_id: int, token_buckets: Sequence[int],
                 word_buckets: Sequence[int], **labelling) -> list[Batch]:
    """All batches of one unshuffled pass (evaluation / prediction order: by bucket, then input order).

    `labelling`: `window`, `label_to_id`, `num_types`, `label_format`, `bucket_plan` as for
    `BatchIterator` (omit the label ones for unlabelled input).
    """
    return list(BatchIterator(segments, batch_size, pad_id, token_buckets, word_buckets,
                              shuffle=False, num_epochs=1, **labelling))
