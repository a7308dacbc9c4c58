"""Training and evaluation: `train_and_evaluate(config, workdir)` and the pieces it is built from.

Building blocks that other code (memory predictor, multi-host launcher, notebooks) can reuse:
  - `load_data(config, workdir)`            documents of each split, tokenizer, label list
  - `model_config_from(config, ...)`        the SenerConfig a run uses
  - `create_train_state(config, model_config, total_updates, rng)`
                                            initial (state, frozen, optimizer); `abstract_train_state`
                                            gives the same as ShapeDtypeStructs without computing it
  - `make_train_step(model_config, optimizer, mesh)`
                                            ONE jitted function (state, frozen, batch) -> (state, metrics);
                                            lowerable with abstract inputs: `step.lower(...).compile()`
  - `evaluate_split(...)`                   decode -> merge -> document-level P/R/F1 (SPEC section 9)

Sharding: a 1-D mesh over all devices with axis "data"; params and optimizer state replicated,
batches sharded along rows. The step's loss is normalised by the GLOBAL number of real rows, so
the result does not depend on the number of devices.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from flax import traverse_util

from sener_jax import checkpointing, convert, distributed, metrics, optim
from sener_jax.data import (
    BatchIterator,
    Document,
    MaskingConfig,
    label_set,
    load_tokenizer,
    read_documents,
    segment_documents,
)
from sener_jax.export import export_model
from sener_jax.losses import span_bce_loss
from sener_jax.models.deberta import EncoderConfig
from sener_jax.models.lora import is_lora_path
from sener_jax.models.sener import SenerConfig, band_logits, init_params
from sener_jax.models.span_head import SpanHeadConfig, band_cell_mask
from sener_jax.predict import InferenceSettings, make_logits_fn, predict_documents

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
BATCH_KEYS = ("input_ids", "attention_mask", "word_index", "word_mask", "labels", "row_weight")
# EncoderConfig fields that stay as the config says when a pretrained encoder is loaded: SeNER's own
# choices and the dropout rates (e.g. attention dropout 0 for the Pallas kernel, which has none).
# Every other field (the geometry) comes from the checkpoint.
SENER_ENCODER_FIELDS = (
    "attention", "attention_impl", "window", "logn", "logn_length", "lora_rank", "lora_alpha", "dtype", "remat",
    "hidden_dropout_prob", "attention_probs_dropout_prob",
)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DataBundle:
    splits: dict[str, list[Document]]
    tokenizer: Any
    labels: list[str]


def _limit(documents, n: int):
    return list(documents)[:n] if n and n > 0 else list(documents)


def split_by_order(documents: list[Document], fractions) -> dict[str, list[Document]]:
    """Deterministic train/dev/test split by document order (first 80% train, next 10% dev, rest test)."""
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"data.split_fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    n = len(documents)
    n_train = int(round(fractions[0] * n))
    n_dev = int(round(fractions[1] * n))
    return {"train": documents[:n_train], "dev": documents[n_train : n_train + n_dev], "test": documents[n_train + n_dev :]}


def write_synthetic_data(directory: pathlib.Path, synthetic: ml_collections.ConfigDict) -> dict[str, str]:
    """Generates the synthetic homepages into `directory` (once; same seed, same files)."""
    from sener_jax.data import document_to_chars_record, write_jsonl
    from sener_jax.data.synthetic import PRESETS, generate_documents

    sizes = dataclasses.replace(
        PRESETS[synthetic.preset],
        **{f"n_{split}": synthetic[f"n_{split}"] for split in SPLITS if synthetic.get(f"n_{split}", 0) > 0},
    )
    counts = {"train": sizes.n_train, "dev": sizes.n_dev, "test": sizes.n_test}
    directory.mkdir(parents=True, exist_ok=True)
    stamp = directory / "synthetic.json"
    description = json.dumps({"seed": synthetic.seed, "sizes": dataclasses.asdict(sizes)}, sort_keys=True)
    paths = {split: str(directory / f"{split}.jsonl") for split in SPLITS}
    if not stamp.is_file() or stamp.read_text() != description:
        logger.info("generating synthetic data into %s: %s", directory, counts)
        for split in SPLITS:
            documents = generate_documents(counts[split], synthetic.seed, sizes, split)
            write_jsonl(paths[split], (document_to_chars_record(d) for d in documents))
        stamp.write_text(description)
    return {**paths, "tokenizer": "synthetic"}


def load_data(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> DataBundle:
    """Reads (or, for the synthetic demo, generates into WORKDIR/data) every configured split."""
    data = config.data
    paths = {"train": data.train_path, "dev": data.dev_path, "test": data.test_path}
    if data.synthetic.get("enabled", False):
        paths = write_synthetic_data(pathlib.Path(workdir) / "data", data.synthetic)
    splits: dict[str, list[Document]] = {}
    if data.single_file and not data.train_path:
        documents = list(read_documents(data.single_file, format=data.format))
        splits = split_by_order(documents, data.split_fractions)
        logger.info(
            "split %s by document order into train/dev/test = %s documents",
            data.single_file, [len(splits[s]) for s in SPLITS],
        )
    for split in SPLITS:
        if split not in splits and paths.get(split):
            splits[split] = list(read_documents(paths[split], format=data.format))
    if "train" in splits:
        splits["train"] = _limit(splits["train"], data.max_train_docs)
    for split in ("dev", "test"):
        if split in splits:
            splits[split] = _limit(splits[split], data.max_eval_docs)
    splits = {k: v for k, v in splits.items() if v}
    tokenizer = load_tokenizer(paths.get("tokenizer") or data.tokenizer)
    labels = label_set([d for docs in splits.values() for d in docs])
    if not labels:
        raise ValueError(f"no entity labels found in any split of data {data.name!r}: {sorted(splits)}")
    return DataBundle(splits=splits, tokenizer=tokenizer, labels=labels)


def inference_settings(config) -> InferenceSettings:
    return InferenceSettings(
        max_tokens=config.data.max_tokens,
        overlap_words=config.data.overlap_words,
        threshold=config.eval.threshold,
        token_bucket_base=config.data.get("token_bucket_base", 128),
        word_bucket_base=config.data.get("word_bucket_base", 32),
    )


# ----------------------------------------------------------------------------------------------
# Model and parameters
# ----------------------------------------------------------------------------------------------


def model_config_from(config: ml_collections.ConfigDict, vocab_size: int, num_types: int) -> SenerConfig:
    """The SenerConfig of a run. With a pretrained encoder its geometry comes from the checkpoint."""
    fields = config.model.encoder.to_dict()
    if fields.get("vocab_size", 0) <= 0:
        fields["vocab_size"] = vocab_size
    if fields.get("pos_att_type") is not None:
        fields["pos_att_type"] = tuple(fields["pos_att_type"])
    encoder = EncoderConfig.from_dict(fields)
    if config.model.pretrained:
        pretrained = pretrained_encoder_config(config.model.pretrained)
        encoder = dataclasses.replace(pretrained, **{k: getattr(encoder, k) for k in SENER_ENCODER_FIELDS})
    if encoder.vocab_size < vocab_size:
        raise ValueError(
            f"model.encoder.vocab_size={encoder.vocab_size} is smaller than the tokenizer's vocabulary ({vocab_size})"
        )
    head = SpanHeadConfig(num_types=num_types, **config.model.head.to_dict())
    return SenerConfig(encoder=encoder, head=head, pool_impl=config.model.pool_impl)


def initial_params(config, model_config: SenerConfig, rng: jax.Array) -> dict:
    """Random params, with the encoder replaced by the pretrained one when configured."""
    params = init_params(model_config, rng)
    if not config.model.pretrained:
        logger.warning(
            "model.pretrained is empty: the encoder starts from RANDOM weights (fine for the demo and "
            "tests; set --config.model.pretrained=microsoft/deberta-v3-large or a directory for real runs)"
        )
        return params
    logger.info("loading the pretrained encoder from %s", config.model.pretrained)
    params["encoder"] = load_pretrained_encoder(config.model.pretrained, params["encoder"])
    return params


def _is_converted_dir(spec: str) -> bool:
    return (pathlib.Path(spec) / convert.CONFIG_FILE).is_file()


def pretrained_encoder_config(spec: str) -> EncoderConfig:
    """The geometry of a pretrained encoder: a `sener_jax.convert` output directory, or a Hugging
    Face directory / hub name (its config.json)."""
    if _is_converted_dir(spec):
        return EncoderConfig.from_dict(json.loads((pathlib.Path(spec) / convert.CONFIG_FILE).read_text()))
    return EncoderConfig.from_hf_config(convert.resolve_model_dir(spec))


def load_pretrained_encoder(spec: str, random_params: dict) -> dict:
    """Pretrained encoder weights in the layout of `random_params`; LoRA leaves (never part of a
    pretrained checkpoint) keep their fresh initialisation (B = 0: the adapter starts as a no-op)."""
    _, loaded = convert.load_encoder(spec) if _is_converted_dir(spec) else convert.load_hf_deberta(spec)
    loaded = traverse_util.flatten_dict(jax.device_get(loaded))
    out = {}
    for path, fresh in traverse_util.flatten_dict(random_params).items():
        if is_lora_path(path):
            out[path] = fresh
            continue
        if path not in loaded:
            raise ValueError(f"pretrained encoder {spec}: parameter {'/'.join(path)} is missing")
        if tuple(loaded[path].shape) != tuple(fresh.shape):
            raise ValueError(
                f"pretrained encoder {spec}: parameter {'/'.join(path)} has shape {tuple(loaded[path].shape)}, "
                f"the configured model expects {tuple(fresh.shape)}"
            )
        out[path] = jnp.asarray(loaded[path], fresh.dtype)
    return traverse_util.unflatten_dict(out)


def create_train_state(config, model_config: SenerConfig, total_updates: int, rng: jax.Array):
    """(state, frozen, optimizer). `state` = {"step", "trainable", "opt_state", "rng"} holds everything
    that changes during training; `frozen` holds the encoder weights that never do (no optimizer state)."""
    init_key, dropout_key = jax.random.split(rng)
    params = initial_params(config, model_config, init_key)
    trainable, frozen = optim.split_trainable(params, config.train.finetune)
    optimizer = optim.make_optimizer(config.train, trainable, total_updates)
    state = {
        "step": jnp.zeros((), jnp.int32),
        "trainable": trainable,
        "opt_state": optimizer.init(trainable),
        "rng": dropout_key,
    }
    return state, frozen, optimizer


def abstract_train_state(config, model_config: SenerConfig, total_updates: int = 1000):
    """(state, frozen) as ShapeDtypeStructs (nothing allocated) plus the optimizer: for `.lower()`."""
    optimizer_box = []

    def build():
        params = init_params(model_config, jax.random.PRNGKey(0))
        trainable, frozen = optim.split_trainable(params, config.train.finetune)
        optimizer = optim.make_optimizer(config.train, trainable, total_updates)
        optimizer_box.append(optimizer)
        state = {"step": jnp.zeros((), jnp.int32), "trainable": trainable, "opt_state": optimizer.init(trainable),
                 "rng": jax.random.PRNGKey(0)}
        return state, frozen

    state, frozen = jax.eval_shape(build)
    return state, frozen, optimizer_box[0]


def abstract_batch(batch_size: int, n_tokens: int, n_words: int, window: int, num_types: int) -> dict:
    """ShapeDtypeStructs of one global training batch."""
    s = jax.ShapeDtypeStruct
    return {
        "input_ids": s((batch_size, n_tokens), jnp.int32),
        "attention_mask": s((batch_size, n_tokens), jnp.int32),
        "word_index": s((batch_size, n_tokens), jnp.int32),
        "word_mask": s((batch_size, n_words), jnp.bool_),
        "labels": s((batch_size, n_words, 2 * window + 1, num_types), jnp.uint8),
        "row_weight": s((batch_size,), jnp.float32),
    }


# ----------------------------------------------------------------------------------------------
# The training step
# ----------------------------------------------------------------------------------------------


def make_mesh(devices=None) -> Mesh:
    devices = np.asarray(devices if devices is not None else jax.devices())
    return Mesh(devices.reshape(-1), ("data",))


def replicate(tree, mesh: Mesh):
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(arrays: dict, mesh: Mesh) -> dict:
    return jax.device_put(arrays, NamedSharding(mesh, P("data")))


def loss_sum(model_config: SenerConfig, params, batch, *, deterministic: bool, dropout_key=None):
    """Sum over the rows of `batch` of row_weight * (BCE summed over the row's valid cells)."""
    logits = band_logits(
        model_config, params, batch["input_ids"], batch["attention_mask"], batch["word_index"], batch["word_mask"],
        deterministic=deterministic, rngs=None if deterministic else {"dropout": dropout_key},
    )
    cells = band_cell_mask(batch["word_mask"], model_config.head.window)
    weight = batch["row_weight"]
    # span_bce_loss is sum(weight * row_loss) / sum(weight): times sum(weight) gives the weighted sum.
    return span_bce_loss(logits, batch["labels"], cells, row_weight=weight) * jnp.sum(weight)


def make_train_step(model_config: SenerConfig, optimizer: optax.GradientTransformation, mesh: Mesh, *, deterministic: bool = False):
    """The training step: one jitted function (state, frozen, batch) -> (state, {"loss", "grad_norm"}).

    Inside, a shard_map over the "data" axis computes each device's share of the loss, normalised
    by the global number of real rows, and its gradient; the optimizer update then runs on the
    replicated (summed) gradient. `state` is donated. Inputs must already live on `mesh`:
    state/frozen replicated (`replicate`), the batch sharded along rows (`shard_batch`).
    """

    def device_grads(trainable, frozen, batch, rng, step):
        key = jax.random.fold_in(jax.random.fold_in(rng, step), jax.lax.axis_index("data"))
        global_rows = jnp.maximum(jax.lax.psum(jnp.sum(batch["row_weight"]), "data"), 1.0)

        def loss_fn(train_params):
            params = optim.merge_params(train_params, frozen)
            return loss_sum(model_config, params, batch, deterministic=deterministic, dropout_key=key) / global_rows

        loss, grads = jax.value_and_grad(loss_fn)(trainable)
        # `trainable` enters replicated (P()); with shard_map's varying-axis checks (check_vma),
        # the gradient w.r.t. a replicated input is already summed over "data" by the transpose
        # of the implicit broadcast, so only the loss needs an explicit psum.
        return jax.lax.psum(loss, "data"), grads

    sharded = jax.shard_map(
        device_grads,
        mesh=mesh,
        in_specs=(P(), P(), P("data"), P(), P()),
        out_specs=(P(), P()),
    )

    def step(state, frozen, batch):
        loss, grads = sharded(state["trainable"], frozen, batch, state["rng"], state["step"])
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["trainable"])
        new_state = {
            "step": state["step"] + 1,
            "trainable": optax.apply_updates(state["trainable"], updates),
            "opt_state": opt_state,
            "rng": state["rng"],
        }
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    return jax.jit(step, donate_argnums=(0,))


def device_batch(batch, mesh: Mesh) -> dict:
    """A data Batch -> the sharded arrays the step takes (row_weight = 1 for real rows, 0 for padding)."""
    arrays = {k: batch.arrays[k] for k in BATCH_KEYS if k in batch.arrays}
    arrays["row_weight"] = batch.row_valid.astype(np.float32)
    # Each process holds only its rows (multi-host): assemble the global array from them.
    return distributed.global_batch(arrays, mesh)


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def evaluate_split(
    logits_fn, params, documents, tokenizer, labels, settings: InferenceSettings, model_config: SenerConfig,
    *, batch_size: int, split: str,
) -> dict:
    """Document-level micro and per-type P/R/F1 on `documents` (gold: every entity, SPEC section 9)."""
    predicted = predict_documents(
        logits_fn, params, documents, tokenizer, labels, settings,
        window=model_config.head.window, batch_size=batch_size, progress=f"eval {split}",
    )
    gold = {d.doc_id: [(e.start, e.end, e.label) for e in d.entities] for d in documents}
    results = metrics.evaluate_entities(gold, predicted, max_span_words=model_config.head.window + 1)
    results["split"] = split
    return results


def write_eval(workdir: pathlib.Path, split: str, results: dict) -> None:
    path = workdir / f"eval_{split}.json"
    path.write_text(json.dumps(results, indent=2, sort_keys=True))
    print(metrics.format_table(results, title=f"== {split}: {results['documents']} documents ({path}) =="), flush=True)


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
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
    def trained_groups(self) -> tuple[str, ...]:
        return {"lora": ("head", "lora"), "full": ("head", "encoder"), "head": ("head",)}[self.config.train.finetune]

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
            "total_steps": self.total_steps,
        }


def prepare_run(config, workdir) -> Run:
    workdir = pathlib.Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    # Process 0 first: it generates the synthetic data (if any) that the others then only read.
    data = distributed.primary_first(lambda: load_data(config, workdir))
    model_config = model_config_from(config, data.tokenizer.vocab_size, len(data.labels))
    mesh = make_mesh()
    n_devices = mesh.devices.size
    for name, size in (("train.batch_size", config.train.batch_size), ("eval.batch_size", config.eval.batch_size)):
        if size % n_devices:
            raise ValueError(f"{name}={size} must be a multiple of the number of devices ({n_devices})")
    settings = inference_settings(config)
    iterator, total_steps = None, 0
    if "train" in data.splits:
        tokenizer = data.tokenizer
        segments = segment_documents(data.splits["train"], tokenizer, settings.max_tokens, settings.overlap_words)
        token_buckets, word_buckets = settings.buckets()
        masking = None
        if config.data.mask_probability > 0:
            masking = MaskingConfig(
                mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size,
                special_ids=tuple(tokenizer.special_ids), fraction=config.data.mask_probability,
            )
        iterator = BatchIterator(
            segments, config.train.batch_size, tokenizer.pad_id, token_buckets, word_buckets,
            window=model_config.head.window, label_to_id={l: i for i, l in enumerate(data.labels)},
            num_types=len(data.labels), shuffle=True, seed=config.seed, num_epochs=config.train.num_epochs,
            masking=masking,
        )
        if jax.process_count() > 1:
            iterator = iterator.shard(*distributed.process_shard())  # this host's rows of every global batch
        total_steps = len(iterator) * config.train.num_epochs
        if config.train.max_steps > 0:
            total_steps = min(total_steps, config.train.max_steps)
    total_updates = max(1, math.ceil(total_steps / config.train.grad_accum_steps))
    return Run(config, workdir, data, model_config, mesh, settings, iterator, total_steps, total_updates)


def _record(run: Run, loop: dict) -> dict:
    return {"iterator": run.train_iterator.state(), "loop": loop, "fingerprint": run.fingerprint}


def _abstract_on_mesh(tree, mesh):
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
    """Trains (resuming from WORKDIR/checkpoints when present), evaluates, exports.

    Returns {"dev": results, "test": results} for the splits that exist (best checkpoint).
    """
    from tensorboardX import SummaryWriter

    run = prepare_run(config, workdir)
    if run.train_iterator is None:
        raise ValueError(f"data {config.data.name!r}: no training documents (set data.train_path or data.single_file)")
    workdir, mesh, tconf = run.workdir, run.mesh, config.train
    logger.info(
        "%d devices; %d train segments; %d steps (%d per epoch); labels %s",
        mesh.devices.size, len(run.train_iterator.segments), run.total_steps, len(run.train_iterator), run.data.labels,
    )
    state, frozen, optimizer = create_train_state(config, run.model_config, run.total_updates, jax.random.PRNGKey(config.seed))
    state, frozen = replicate(state, mesh), replicate(frozen, mesh)
    latest = checkpointing.RunCheckpoints(workdir / "checkpoints" / "latest")
    best = checkpointing.RunCheckpoints(workdir / "checkpoints" / "best")
    loop = {"epochs_done": 0, "best_f1": -1.0, "best_step": -1, "bad_epochs": 0, "history": [], "stopped": False}
    if latest.latest_step() is not None:
        step = latest.latest_step()
        state, record = latest.restore(step, _abstract_on_mesh(state, mesh), run.fingerprint)
        run.train_iterator.restore(record["iterator"])
        loop = record["loop"]
        logger.info("resumed from %s at step %d (iterator %s)", latest.directory / str(step), step, record["iterator"])

    train_step = make_train_step(run.model_config, optimizer, mesh)
    # Multi-host: every process evaluates on its own devices (same documents, same result); only
    # process 0 writes TensorBoard, evaluation files and the export.
    eval_mesh = distributed.local_mesh(mesh)
    logits_fn = make_logits_fn(run.model_config, eval_mesh)
    writer = SummaryWriter(str(workdir / "tensorboard")) if distributed.is_primary() else distributed.NullWriter()
    iterator = run.train_iterator
    steps_per_epoch = len(iterator)
    step = int(state["step"])

    def params_of(st):
        return distributed.to_local(optim.merge_params(st["trainable"], frozen), eval_mesh)

    def end_of_epoch(epoch: int):
        nonlocal state
        loop["epochs_done"] = epoch + 1
        if "dev" in run.data.splits and (epoch + 1) % tconf.eval_every_epochs == 0:
            results = evaluate_split(
                logits_fn, params_of(state), run.data.splits["dev"], run.data.tokenizer, run.data.labels,
                run.settings, run.model_config, batch_size=config.eval.batch_size, split="dev",
            )
            f1 = results["micro"]["f1"]
            for key in ("precision", "recall", "f1"):
                writer.add_scalar(f"dev/{key}", results["micro"][key], step)
            loop["history"].append({"epoch": epoch + 1, "step": step, "dev": results["micro"]})
            logger.info("epoch %d: dev P %.4f R %.4f F1 %.4f", epoch + 1, results["micro"]["precision"],
                        results["micro"]["recall"], f1)
            if f1 > loop["best_f1"]:
                loop.update(best_f1=f1, best_step=step, bad_epochs=0)
                best.save(step, {"trainable": state["trainable"]}, _record(run, loop))
            else:
                loop["bad_epochs"] += 1
                if loop["bad_epochs"] >= tconf.patience:
                    logger.info("early stopping: no dev-F1 gain for %d epochs", loop["bad_epochs"])
                    loop["stopped"] = True
        latest.save(step, state, _record(run, loop))

    window_loss, window_tokens, window_start = [], 0, time.perf_counter()
    while not loop["stopped"] and step < run.total_steps:
        epoch = iterator.epoch
        if iterator.position >= steps_per_epoch:
            # The epoch's batches are done but the kill came before its evaluation/checkpoint.
            if loop["epochs_done"] <= epoch:
                end_of_epoch(epoch)
            iterator.restore({**iterator.state(), "epoch": epoch + 1, "position": 0})
            continue
        bar = tqdm(total=steps_per_epoch, initial=iterator.position, desc=f"epoch {epoch + 1}/{tconf.num_epochs}", unit="step",
                   disable=not distributed.is_primary())
        while iterator.position < steps_per_epoch and step < run.total_steps:
            batch = next(iterator)
            state, step_metrics = train_step(state, frozen, device_batch(batch, mesh))
            step += 1
            window_loss.append(step_metrics["loss"])
            window_tokens += int(batch.arrays["attention_mask"].sum())
            bar.update(1)
            if step % tconf.log_every_steps == 0 or step == run.total_steps:
                losses = [float(x) for x in window_loss]
                elapsed = time.perf_counter() - window_start
                rates = optim.current_learning_rates(tconf, run.total_updates, step // tconf.grad_accum_steps)
                tokens_per_s = window_tokens / max(elapsed, 1e-9)
                writer.add_scalar("train/loss", np.mean(losses), step)
                writer.add_scalar("train/tokens_per_s", tokens_per_s, step)
                for group in run.trained_groups:
                    writer.add_scalar(f"train/lr_{group}", rates[group], step)
                shown = ", ".join(f"lr {g} {rates[g]:.3g}" for g in run.trained_groups)
                logger.info("step %d: loss %.4f, %s, %.0f tokens/s", step, np.mean(losses), shown, tokens_per_s)
                bar.set_postfix(loss=f"{np.mean(losses):.4f}")
                window_loss, window_tokens, window_start = [], 0, time.perf_counter()
            if tconf.checkpoint_every_steps and step % tconf.checkpoint_every_steps == 0 and iterator.position < steps_per_epoch:
                latest.save(step, state, _record(run, loop))
        bar.close()
        if iterator.position >= steps_per_epoch or step >= run.total_steps:
            end_of_epoch(epoch)
    writer.flush()

    results = finish(run, state["trainable"] if best.latest_step() is None else None, frozen, best, logits_fn)
    for split, res in results.items():
        writer.add_scalar(f"final_{split}/f1", res["micro"]["f1"], step)
    writer.close()
    latest.close()
    best.close()
    return results


def _best_trainable(best: checkpointing.RunCheckpoints, run: Run, like):
    step = best.latest_step()
    restored, _ = best.restore(step, _abstract_on_mesh({"trainable": like}, run.mesh), run.fingerprint)
    logger.info("using the best checkpoint: step %d", step)
    return restored["trainable"]


def evaluate_and_write(run: Run, logits_fn, params) -> dict:
    """Evaluates every configured split that has documents; writes WORKDIR/eval_<split>.json."""
    results = {}
    for split in run.config.eval.splits:
        if split in run.data.splits:
            results[split] = evaluate_split(
                logits_fn, params, run.data.splits[split], run.data.tokenizer, run.data.labels, run.settings,
                run.model_config, batch_size=run.config.eval.batch_size, split=split,
            )
            if distributed.is_primary():
                write_eval(run.workdir, split, results[split])
    return results


def finish(run: Run, trainable, frozen, best, logits_fn) -> dict:
    """Evaluates the best params on every eval split and writes the export."""
    config = run.config
    if trainable is None:
        like, _ = optim.split_trainable(
            jax.eval_shape(lambda: init_params(run.model_config, jax.random.PRNGKey(0))), config.train.finetune
        )
        trainable = _best_trainable(best, run, like)
    params = distributed.to_local(optim.merge_params(trainable, frozen), distributed.local_mesh(run.mesh))
    results = evaluate_and_write(run, logits_fn, params)
    if config.train.export and distributed.is_primary():
        path = export_model(run.workdir / "export", run.model_config, params, run.data.tokenizer, run.data.labels, run.settings)
        logger.info("exported the model to %s", path)
    return results


# ----------------------------------------------------------------------------------------------
# Other modes
# ----------------------------------------------------------------------------------------------


def _restore_best_params(run: Run):
    best = checkpointing.RunCheckpoints(run.workdir / "checkpoints" / "best")
    if best.latest_step() is None:
        raise FileNotFoundError(f"no best checkpoint under {best.directory}: train first (--mode=train)")
    params = initial_params(run.config, run.model_config, jax.random.split(jax.random.PRNGKey(run.config.seed))[0])
    trainable, frozen = optim.split_trainable(params, run.config.train.finetune)
    frozen = replicate(frozen, run.mesh)
    trainable = _best_trainable(best, run, trainable)
    best.close()
    return optim.merge_params(trainable, frozen)


def evaluate_checkpoint(config, workdir) -> dict:
    run = prepare_run(config, workdir)
    params = _restore_best_params(run)
    return evaluate_and_write(run, make_logits_fn(run.model_config, run.mesh), params)


def export_checkpoint(config, workdir) -> pathlib.Path:
    run = prepare_run(config, workdir)
    params = _restore_best_params(run)
    return export_model(run.workdir / "export", run.model_config, params, run.data.tokenizer, run.data.labels, run.settings)


def run_mode(mode: str, config, workdir) -> None:
    """Dispatch for main.py."""
    if mode == "train":
        train_and_evaluate(config, workdir)
    elif mode == "eval":
        evaluate_checkpoint(config, workdir)
    elif mode == "export":
        print(export_checkpoint(config, workdir))
    elif mode == "predict":
        from sener_jax.predict import run_predict_mode

        run_predict_mode(config, workdir)  # predictions + HTML report, paths and checks in predict.py
    elif mode == "stats":
        from sener_jax.data.coverage import report

        data = load_data(config, workdir)
        print(report(data.splits, data.tokenizer, config.model.head.window, config.data.max_tokens,
                     config.data.overlap_words, original=True))
    else:
        raise ValueError(f"unknown mode {mode!r}")
