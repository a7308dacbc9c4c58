"""What a training run, or an evaluation/export of its checkpoints, is built from: `prepare_run`
reads the data and derives the model config, mesh, inference settings and the training iterator
once (`RunSetup`); `restore_best_trainable` reads the best checkpoint back."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib

import jax
import ml_collections
from jax.sharding import Mesh

from sener_jax import checkpointing, distributed
from sener_jax.data.bucket_plan import BucketPlan
from sener_jax.data import BatchIterator, DataBundle, MaskingConfig, load_data, segment_documents
from sener_jax.data.batching import authors_total_steps
from sener_jax.models.sener import SenerConfig
from sener_jax.predict import InferenceSettings
from sener_jax.train_step import abstract_replicated, make_mesh, model_config_from

logger = logging.getLogger(__name__)


def inference_settings(config) -> InferenceSettings:
    return InferenceSettings(
        max_tokens=config.data.max_tokens,
        overlap_words=config.data.overlap_words,
        threshold=config.eval.threshold,
        token_bucket_base=config.data.get("token_bucket_base", 128),
        word_bucket_base=config.data.get("word_bucket_base", 32),
        segmentation=config.data.get("segmentation", "words"),
        merge=config.data.get("merge", "margin"),
        boundary_word_crosses=config.eval.get("boundary_word_crosses", True),
        batching=config.eval.get("batching", "buckets"),
    )


@dataclasses.dataclass
class RunSetup:
    """Everything a training run or an evaluation of its checkpoints needs, built once."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    data: DataBundle
    model_config: SenerConfig
    mesh: Mesh
    settings: InferenceSettings
    train_iterator: BatchIterator | None
    total_steps: int
    total_updates: int

    @property
    def fingerprint(self) -> dict:
        return {
            "model": json.loads(json.dumps(self.model_config.to_dict(), default=list)),
            "labels": self.data.labels,
            "finetune": self.config.train.finetune,
            # Frozen weights are not checkpointed (they are re-read on resume): their source must match.
            "pretrained": self.config.model.pretrained,
            "seed": self.config.seed,
            "batch_size": self.config.train.batch_size,
            # Not total_steps: a run may be extended (more epochs); `schedule_record` tells the
            # resumed run how long its learning-rate schedule was.
        }

    @property
    def schedule_record(self) -> dict:
        return {"total_steps": self.total_steps, "total_updates": self.total_updates}


def split_bucket_plan(segments, max_buckets: int, settings: InferenceSettings, split: str) -> BucketPlan | None:
    """At most `max_buckets` batch shapes for these segments (None: 0 asks for the fixed power-of-two
    buckets), logged with the fraction of token slots that are padding."""
    plan = settings.bucket_plan(segments, max_buckets)
    if plan is None:
        return None
    logger.info("%s: %d segments in %d (tokens, words) buckets %s; %.1f%% of token slots are padding",
                split, len(segments), len(plan.shapes), list(plan.shapes), 100 * plan.padding_fraction)
    return plan


def train_iterator(config, data: DataBundle, model_config: SenerConfig, settings: InferenceSettings) -> BatchIterator:
    """The shuffled, resumable iterator over the training segments (this host's rows of each batch)."""
    tokenizer = data.tokenizer
    segments = segment_documents(data.splits["train"], tokenizer, settings.max_tokens, settings.overlap_words,
                                 settings.segmentation)
    token_buckets, word_buckets = settings.buckets()
    plan = split_bucket_plan(segments, config.data.get("max_buckets", 4), settings, "train")
    masking = None
    if config.data.mask_probability > 0:
        masking = MaskingConfig(
            mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size,
            special_ids=tuple(tokenizer.special_ids), fraction=config.data.mask_probability,
            scope=config.data.get("mask_scope", "segment"),
        )
    iterator = BatchIterator(
        segments, config.train.batch_size, tokenizer.pad_id, token_buckets, word_buckets,
        window=model_config.head.band_half_width, label_to_id={l: i for i, l in enumerate(data.labels)},
        num_types=len(data.labels), shuffle=True, seed=config.seed, num_epochs=config.train.num_epochs,
        masking=masking, label_format=config.data.get("label_format", "spans"), bucket_plan=plan,
        bucketing=config.train.get("batching", "buckets") == "buckets",
    )
    if jax.process_count() > 1:
        iterator = iterator.shard(*distributed.process_shard())  # this host's rows of every global batch
    return iterator


def prepare_run(config, workdir) -> RunSetup:
    workdir = pathlib.Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    # Process 0 first: it generates the synthetic data (if any) that the others then only read.
    data = distributed.primary_first(lambda: load_data(config, workdir))
    model_config = model_config_from(config, data.tokenizer.vocab_size, len(data.labels))
    mesh = make_mesh()
    n_devices = mesh.devices.size
    sizes = [("train.batch_size", config.train.batch_size), ("eval.batch_size", config.eval.batch_size)]
    sizes += [(f"eval.{s}_batch_size", config.eval.get(f"{s}_batch_size", 0)) for s in ("dev", "test")]
    for name, size in sizes:
        if size % n_devices:
            raise ValueError(f"{name}={size} must be a multiple of the number of devices ({n_devices})")
    settings = inference_settings(config)
    iterator, total_steps = None, 0
    if "train" in data.splits:
        iterator = train_iterator(config, data, model_config, settings)
        total_steps = len(iterator) * config.train.num_epochs
        if config.train.get("schedule_steps", "batches") == "authors":
            total_steps = authors_total_steps(len(iterator.segments), config.train.batch_size, config.train.num_epochs)
        if config.train.max_steps > 0:
            total_steps = min(total_steps, config.train.max_steps)
    total_updates = max(1, math.ceil(total_steps / config.train.grad_accum_steps))
    return RunSetup(config, workdir, data, model_config, mesh, settings, iterator, total_steps, total_updates)


def restore_best_trainable(best: checkpointing.RunCheckpoints, run: RunSetup, like):
    """The trainable params of the best checkpoint, in the structure of `like`, replicated on the run's mesh."""
    step = best.latest_step()
    restored, _ = best.restore(step, abstract_replicated({"trainable": like}, run.mesh), run.fingerprint)
    logger.info("loaded the trained params of the best checkpoint: step %d, %s", step, best.directory / str(step))
    return restored["trainable"]
