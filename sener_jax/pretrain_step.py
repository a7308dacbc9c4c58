"""What a pretraining run is made of: the corpus as segments, the encoder config, the MLM batches,
the optimizer and ONE jitted step over the "data" mesh axis (same layout as `train_step`: params
replicated, batch sharded along rows, loss normalised by the GLOBAL number of predicted tokens).
The loop around it is `sener_jax.pretrain`.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec as P

from sener_jax import distributed, optim
from sener_jax.convert import load_pretrained_encoder
from sener_jax.data.batching import BatchIterator, length_buckets
from sener_jax.data.corpus import read_corpus
from sener_jax.data.mlm import MlmSpec, mlm_arrays
from sener_jax.data.segment import segment_documents
from sener_jax.data.tokenizer import load_tokenizer
from sener_jax.models.deberta import EncoderConfig, init_encoder_params
from sener_jax.models.mlm_head import init_mlm_head_params, mlm_logits, mlm_loss_sum
from sener_jax.train_step import make_mesh, model_config_from

STEP_KEYS = ("input_ids", "attention_mask", "mlm_positions", "mlm_targets", "mlm_weights")
OUTPUT_VOCABS = ("corpus", "full")


@dataclasses.dataclass
class PretrainSetup:
    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    mesh: Mesh
    tokenizer: Any
    encoder: EncoderConfig
    spec: MlmSpec
    iterator: BatchIterator
    total_steps: int
    output_ids: np.ndarray | None = None  # the MLM softmax's token ids; None: the whole vocabulary

    @property
    def fingerprint(self) -> dict:
        """What must match for a checkpoint to resume this run."""
        p = self.config.pretrain
        return {"encoder": self.encoder.to_dict(), "spec": dataclasses.asdict(self.spec),
                "segments": len(self.iterator.segments), "batch_size": p.batch_size, "total_steps": self.total_steps,
                "lr": p.lr, "warmup_fraction": p.warmup_fraction, "seed": self.config.seed,
                "output_vocab": None if self.output_ids is None else int(len(self.output_ids))}


def encoder_config_of(config, vocab_size: int) -> EncoderConfig:
    """The encoder geometry as fine-tuning builds it (a pretrained checkpoint's when configured)."""
    encoder = model_config_from(config, vocab_size, 1).encoder
    if encoder.lora_rank:
        raise ValueError(f"pretraining trains the whole encoder: set model.encoder.lora_rank=0 "
                         f"(got {encoder.lora_rank}); LoRA adapters are added at fine-tuning")
    return encoder


def mlm_spec_of(config, tokenizer, encoder: EncoderConfig) -> MlmSpec:
    p = config.pretrain
    return MlmSpec(mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size, special_ids=tokenizer.special_ids,
                   fraction=p.mask_probability, span_words=p.span_words, mask_token=p.mask_token,
                   random_token=p.random_token)


def corpus_output_ids(segments) -> np.ndarray:
    """Sorted ids of every token in the segments: the only ids an MLM target can be (targets are the
    corpus's own tokens), so a softmax over them is exact for this corpus. Every host holds all
    segments before sharding, so every host computes the same list."""
    return np.unique(np.concatenate([np.asarray(s.input_ids, np.int32) for s in segments]))


def output_ids_of(config, segments) -> np.ndarray | None:
    choice = config.pretrain.get("output_vocab", "full")
    if choice not in OUTPUT_VOCABS:
        raise ValueError(f"pretrain.output_vocab must be one of {OUTPUT_VOCABS}, got {choice!r}")
    return corpus_output_ids(segments) if choice == "corpus" else None


def output_targets(targets: np.ndarray, weights: np.ndarray, output_ids: np.ndarray | None) -> np.ndarray:
    """Token-id targets as column indices of the restricted logits (padding slots -> 0)."""
    if output_ids is None:
        return targets
    columns = np.searchsorted(output_ids, targets).clip(0, len(output_ids) - 1).astype(np.int32)
    real = weights > 0
    if not np.array_equal(output_ids[columns[real]], targets[real]):
        raise ValueError("an MLM target is not in the corpus output vocabulary (pretrain.output_vocab='corpus')")
    return np.where(real, columns, 0).astype(np.int32)


def prepare_pretraining(config, workdir) -> PretrainSetup:
    p, data = config.pretrain, config.data
    tokenizer = load_tokenizer(data.tokenizer)
    encoder = encoder_config_of(config, tokenizer.vocab_size)
    documents = read_corpus(p.files, format=data.format)
    segments = segment_documents(documents, tokenizer, data.max_tokens, data.overlap_words)
    process_index, process_count = distributed.process_shard()
    iterator = BatchIterator(
        segments, p.batch_size, tokenizer.pad_id, length_buckets(data.max_tokens, data.token_bucket_base),
        length_buckets(data.max_tokens, data.word_bucket_base), shuffle=True, seed=config.seed, num_epochs=None,
        process_index=process_index, process_count=process_count,
    )
    total = p.max_steps if p.max_steps > 0 else p.num_epochs * len(iterator)
    return PretrainSetup(config, pathlib.Path(workdir).absolute(), make_mesh(), tokenizer, encoder,
                         mlm_spec_of(config, tokenizer, encoder), iterator, int(total),
                         output_ids_of(config, segments))


def host_arrays(setup: PretrainSetup, batch, seed_parts) -> dict:
    """The step's numpy arrays for one batch; masking seeded by `seed_parts` (non-negative ints;
    training and the probe end them with different tags so their masks never coincide)."""
    rng = np.random.default_rng([setup.config.seed, *seed_parts])
    arrays = mlm_arrays(batch.arrays["input_ids"], batch.arrays["word_index"], rng, setup.spec)
    arrays["attention_mask"] = batch.arrays["attention_mask"]
    arrays["mlm_targets"] = output_targets(arrays["mlm_targets"], arrays["mlm_weights"], setup.output_ids)
    return {k: arrays[k] for k in STEP_KEYS}


def initial_params(config, encoder: EncoderConfig, rng: jax.Array) -> dict:
    """{"encoder", "head"}: random, or the encoder of `model.pretrained` (HF or converted) with a
    fresh MLM head (a checkpoint's own head is not needed)."""
    enc_key, head_key = jax.random.split(rng)
    params = {"encoder": init_encoder_params(encoder, enc_key), "head": init_mlm_head_params(encoder, head_key)}
    if config.model.pretrained:
        params["encoder"] = load_pretrained_encoder(config.model.pretrained, params["encoder"])
    return params


def optimizer_settings(config) -> ml_collections.ConfigDict:
    """`optim.make_optimizer`'s train-config view of `config.pretrain`: every weight trained, the
    MLM head and the encoder at the same peak rate, linear warm-up then linear decay."""
    p = config.pretrain
    return ml_collections.ConfigDict(dict(
        finetune="full", lr_head=p.lr, lr_encoder=p.lr, lr_lora=p.lr, warmup_fraction=p.warmup_fraction,
        weight_decay=p.weight_decay, adam_b1=p.adam_b1, adam_b2=p.adam_b2, adam_eps=p.adam_eps,
        grad_clip_norm=p.grad_clip_norm, grad_accum_steps=1,
    ))


def initial_state(config, encoder: EncoderConfig, total_steps: int):
    """(state, optimizer) for `total_steps` of `config.pretrain`'s schedule; state = {"step", "params",
    "opt_state", "rng"}. Needs no corpus (benchmarks/pretrain_step_time.py times the step with it)."""
    init_key, dropout_key = jax.random.split(jax.random.PRNGKey(config.seed))
    params = initial_params(config, encoder, init_key)
    optimizer = optim.make_optimizer(optimizer_settings(config), params, total_steps)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optimizer.init(params), "rng": dropout_key}
    return state, optimizer


def create_state(setup: PretrainSetup):
    """`initial_state` of the run `setup` describes."""
    return initial_state(setup.config, setup.encoder, setup.total_steps)


def make_pretrain_step(encoder: EncoderConfig, optimizer: optax.GradientTransformation, mesh: Mesh, *,
                       output_ids: np.ndarray | None = None, deterministic: bool = False):
    """One jitted (state, batch) -> (state, {"loss", "grad_norm", "predicted"}); state donated.
    `output_ids`: the MLM softmax's ids (batch targets index into it), None for the whole vocabulary."""

    def device_grads(params, batch, rng, step):
        key = jax.random.fold_in(jax.random.fold_in(rng, step), jax.lax.axis_index("data"))
        total = jnp.maximum(jax.lax.psum(jnp.sum(batch["mlm_weights"]), "data"), 1.0)

        def loss_fn(p):
            logits = mlm_logits(encoder, p, batch["input_ids"], batch["attention_mask"], batch["mlm_positions"],
                                output_ids=output_ids, deterministic=deterministic, rngs=None if deterministic else {"dropout": key})
            return mlm_loss_sum(logits, batch["mlm_targets"], batch["mlm_weights"]) / total

        loss, grads = jax.value_and_grad(loss_fn)(params)
        # As in train_step: the gradient w.r.t. the replicated params is already summed over "data".
        return jax.lax.psum(loss, "data"), grads, total

    sharded = jax.shard_map(device_grads, mesh=mesh, in_specs=(P(), P("data"), P(), P()), out_specs=(P(), P(), P()))

    def step(state, batch):
        loss, grads, total = sharded(state["params"], batch, state["rng"], state["step"])
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        new_state = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
                     "opt_state": opt_state, "rng": state["rng"]}
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), "predicted": total}

    return jax.jit(step, donate_argnums=(0,))


def make_eval_loss(encoder: EncoderConfig, mesh: Mesh, output_ids: np.ndarray | None = None):
    """Jitted (params, batch) -> (loss sum, predicted tokens), no dropout: a fixed held-in probe."""

    def device_loss(params, batch):
        logits = mlm_logits(encoder, params, batch["input_ids"], batch["attention_mask"], batch["mlm_positions"],
                            output_ids=output_ids)
        return (jax.lax.psum(mlm_loss_sum(logits, batch["mlm_targets"], batch["mlm_weights"]), "data"),
                jax.lax.psum(jnp.sum(batch["mlm_weights"]), "data"))

    return jax.jit(jax.shard_map(device_loss, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P(), P())))
