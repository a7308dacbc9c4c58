"""What a pretraining run is made of: the corpus as segments, the encoder config, the MLM batches,
the optimizer and ONE jitted step over the "data" mesh axis (same layout as `train_step`: params
replicated, batch sharded along rows, loss normalised by the GLOBAL number of predicted tokens).
The loop around it is `sener_jax.pretrain`.

Two objectives (`pretrain.objective`): "mlm", masked-language modelling with DeBERTa's tied head;
"rtd", replaced-token detection with a small generator (ELECTRA / DeBERTa-v3, `models/rtd.py`), whose
loss is the generator's MLM loss plus `pretrain.rtd_weight` times the discriminator's per-token loss.
Both read the same masked batches.
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
from sener_jax.models.rtd import discriminator_encoder_params, generator_config, init_rtd_head_params, rtd_loss_sums
from sener_jax.train_step import make_mesh, model_config_from

STEP_KEYS = ("input_ids", "attention_mask", "mlm_positions", "mlm_targets", "mlm_weights")
OUTPUT_VOCABS = ("corpus", "full")
OBJECTIVES = ("mlm", "rtd")


@dataclasses.dataclass(frozen=True)
class Objective:
    """`pretrain.objective` and, for "rtd", the generator's depth and the discriminator loss's weight."""
    name: str = "mlm"
    generator_layers: int = 0
    rtd_weight: float = 0.0

    @property
    def is_rtd(self) -> bool:
        return self.name == "rtd"


def objective_of(config, encoder: EncoderConfig) -> Objective:
    p = config.pretrain
    name = p.get("objective", "mlm")
    if name not in OBJECTIVES:
        raise ValueError(f"pretrain.objective must be one of {OBJECTIVES}, got {name!r}")
    if name == "mlm":
        return Objective()
    # 0: half the encoder's depth, DeBERTa-v3's generator (12 of large's 24 layers)
    layers = p.get("generator_layers", 0) or max(1, encoder.num_hidden_layers // 2)
    generator_config(encoder, layers)  # checks the depth
    weight = float(p.get("rtd_weight", 50.0))
    if weight <= 0:
        raise ValueError(f"pretrain.rtd_weight must be > 0, got {weight}")
    return Objective(name, int(layers), weight)


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
    objective: Objective = Objective()

    @property
    def fingerprint(self) -> dict:
        """What must match for a checkpoint to resume this run."""
        p = self.config.pretrain
        return {"encoder": self.encoder.to_dict(), "spec": dataclasses.asdict(self.spec),
                "segments": len(self.iterator.segments), "batch_size": p.batch_size, "total_steps": self.total_steps,
                "lr": p.lr, "warmup_fraction": p.warmup_fraction, "seed": self.config.seed,
                "output_vocab": None if self.output_ids is None else int(len(self.output_ids)),
                # only RTD runs carry the key, so MLM checkpoints written before it still resume
                **({"objective": dataclasses.asdict(self.objective)} if self.objective.is_rtd else {})}


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
                         output_ids_of(config, segments), objective_of(config, encoder))


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
    fresh MLM head (a checkpoint's own head is not needed); for RTD the head also holds a fresh
    generator, whose word embeddings are the encoder's (`models/rtd.py`)."""
    enc_key, head_key = jax.random.split(rng)
    objective = objective_of(config, encoder)
    head = (init_rtd_head_params(encoder, objective.generator_layers, head_key) if objective.is_rtd
            else init_mlm_head_params(encoder, head_key))
    params = {"encoder": init_encoder_params(encoder, enc_key), "head": head}
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


SAMPLE_TAG = 7  # folded into RTD's per-step key so the generator's samples and dropout never share bits


def objective_sums(encoder: EncoderConfig, objective: Objective, params: dict, batch: dict, key: jax.Array, *,
                   output_ids=None, deterministic: bool = True) -> dict:
    """This device's loss sums: {"mlm", "predicted"} and, for RTD, `rtd_loss_sums`' "rtd", "tokens",
    "replaced", "correct" (the MLM terms are then the generator's)."""
    rngs = None if deterministic else {"dropout": key}
    if objective.is_rtd:
        sums = rtd_loss_sums(encoder, objective.generator_layers, params, batch, jax.random.fold_in(key, SAMPLE_TAG),
                             output_ids=output_ids, deterministic=deterministic, rngs=rngs)
    else:
        logits = mlm_logits(encoder, params, batch["input_ids"], batch["attention_mask"], batch["mlm_positions"],
                            output_ids=output_ids, deterministic=deterministic, rngs=rngs)
        sums = {"mlm": mlm_loss_sum(logits, batch["mlm_targets"], batch["mlm_weights"])}
    return {**sums, "predicted": jnp.sum(batch["mlm_weights"])}


def make_pretrain_step(encoder: EncoderConfig, optimizer: optax.GradientTransformation, mesh: Mesh, *,
                       output_ids: np.ndarray | None = None, deterministic: bool = False,
                       objective: Objective = Objective()):
    """One jitted (state, batch) -> (state, {"loss", "grad_norm", "predicted", "mlm_loss"[, "rtd_loss",
    "rtd_accuracy", "replaced"]}); state donated. `output_ids`: the MLM softmax's ids (batch targets
    index into it), None for the whole vocabulary. RTD's loss: generator MLM loss (per predicted
    token) + `rtd_weight` x discriminator loss (per real token), both over the global batch."""

    def device_grads(params, batch, rng, step):
        key = jax.random.fold_in(jax.random.fold_in(rng, step), jax.lax.axis_index("data"))
        predicted = jnp.maximum(jax.lax.psum(jnp.sum(batch["mlm_weights"]), "data"), 1.0)
        if objective.is_rtd:  # the discriminator's loss is per real token of the global batch
            tokens = jnp.maximum(jax.lax.psum(jnp.sum(batch["attention_mask"].astype(jnp.float32)), "data"), 1.0)

        def loss_fn(p):
            sums = objective_sums(encoder, objective, p, batch, key, output_ids=output_ids, deterministic=deterministic)
            terms = {"mlm_loss": sums["mlm"] / predicted}
            if objective.is_rtd:
                terms.update(rtd_loss=sums["rtd"] / tokens, rtd_accuracy=sums["correct"] / tokens,
                             replaced=sums["replaced"] / predicted)
            loss = terms["mlm_loss"] + (objective.rtd_weight * terms["rtd_loss"] if objective.is_rtd else 0.0)
            return loss, terms

        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        # As in train_step: the gradient w.r.t. the replicated params is already summed over "data".
        return jax.lax.psum(loss, "data"), grads, predicted, jax.lax.psum(terms, "data")

    sharded = jax.shard_map(device_grads, mesh=mesh, in_specs=(P(), P("data"), P(), P()),
                            out_specs=(P(), P(), P(), P()))

    def step(state, batch):
        loss, grads, predicted, terms = sharded(state["params"], batch, state["rng"], state["step"])
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        new_state = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
                     "opt_state": opt_state, "rng": state["rng"]}
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), "predicted": predicted, **terms}

    return jax.jit(step, donate_argnums=(0,))


def make_eval_loss(encoder: EncoderConfig, mesh: Mesh, output_ids: np.ndarray | None = None,
                   objective: Objective = Objective()):
    """Jitted (params, batch) -> global sums (`objective_sums`), no dropout: a fixed held-in probe.
    RTD's generator samples come from a fixed key, so the same params give the same sums."""

    def device_sums(params, batch):
        key = jax.random.fold_in(jax.random.PRNGKey(0), jax.lax.axis_index("data"))
        return jax.lax.psum(objective_sums(encoder, objective, params, batch, key, output_ids=output_ids), "data")

    return jax.jit(jax.shard_map(device_sums, mesh=mesh, in_specs=(P(), P("data")), out_specs=P()))


def saved_encoder_params(params: dict, objective: Objective) -> dict:
    """The encoder that `WORKDIR/encoder` receives: the MLM encoder, or RTD's discriminator."""
    return discriminator_encoder_params(params) if objective.is_rtd else params["encoder"]
