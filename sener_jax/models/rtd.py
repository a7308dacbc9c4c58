"""Replaced-token detection (RTD): ELECTRA's pretraining objective, as DeBERTa-v3 uses it
(He et al. 2021, "DeBERTaV3: ... ELECTRA-Style Pre-Training with Gradient-Disentangled Embedding
Sharing"). For pretraining only: everything here except the discriminator encoder is dropped when
the encoder is saved.

A small GENERATOR (the same encoder with `generator_layers` layers) fills the masked positions with
tokens sampled from its MLM softmax; the DISCRIMINATOR (the encoder being pretrained) then labels
EVERY token of the row as original or replaced. The discriminator thus learns from all ~512 tokens
of a row instead of the ~77 masked ones, which is why ELECTRA-style training reaches a given
downstream quality with less compute than MLM at small model sizes.

Embeddings are shared the DeBERTa-v3 way (GDES): the generator reads the word embeddings E (stored
where the encoder keeps them, trained by the generator's MLM loss only); the discriminator reads
stop_gradient(E) + delta, delta a zero-initialised matrix trained by the RTD loss only. The saved
encoder's word embeddings are E + delta (`discriminator_encoder_params`).

Parameters, all under the optimizer's "head" group except the encoder:
    {"encoder": discriminator encoder (its word embeddings = E),
     "head": {"transform", "bias"            -- the generator's MLM head (`mlm_head`), tied to E
              "generator": generator encoder without word embeddings,
              "embedding_delta": (vocab, width),
              "discriminator": `DiscriminatorHead`}}
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from sener_jax.models.deberta import ACTIVATIONS, DebertaEncoder, EncoderConfig, init_encoder_params
from sener_jax.models.mlm_head import init_mlm_head_params, mlm_logits, mlm_loss_sum, word_embeddings


class DiscriminatorHead(nn.Module):
    """ELECTRA's discriminator head: dense + activation + dense(1): one logit per token (replaced?)."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, hidden: jax.Array) -> jax.Array:
        c = self.config
        x = nn.Dense(c.hidden_size, kernel_init=nn.initializers.normal(0.02), name="dense")(hidden)
        x = ACTIVATIONS[c.hidden_act](x)
        return nn.Dense(1, kernel_init=nn.initializers.normal(0.02), name="out")(x)[..., 0]


def generator_config(config: EncoderConfig, layers: int) -> EncoderConfig:
    if not 1 <= layers <= config.num_hidden_layers:
        raise ValueError(f"pretrain.generator_layers must be in 1..{config.num_hidden_layers} (the encoder's "
                         f"depth), got {layers}")
    return dataclasses.replace(config, num_hidden_layers=layers)


def with_word_embeddings(encoder_params: dict, embedding: jax.Array) -> dict:
    """A shallow copy of `encoder_params` whose word-embedding matrix is `embedding`."""
    embeddings = dict(encoder_params["embeddings"], word_embeddings={"embedding": embedding})
    return dict(encoder_params, embeddings=embeddings)


def init_rtd_head_params(config: EncoderConfig, generator_layers: int, rng: jax.Array) -> dict:
    mlm_key, generator_key, head_key = jax.random.split(rng, 3)
    generator = init_encoder_params(generator_config(config, generator_layers), generator_key)
    embeddings = {k: v for k, v in generator["embeddings"].items() if k != "word_embeddings"}
    width = config.embedding_size or config.hidden_size
    return {**init_mlm_head_params(config, mlm_key),
            "generator": dict(generator, embeddings=embeddings),
            "embedding_delta": jnp.zeros((config.vocab_size, width), jnp.float32),
            "discriminator": DiscriminatorHead(config).init(head_key, jnp.zeros((1, config.hidden_size)))["params"]}


def discriminator_encoder_params(params: dict) -> dict:
    """The encoder the discriminator runs (and the one saved): word embeddings sg(E) + delta."""
    embedding = jax.lax.stop_gradient(word_embeddings(params["encoder"])) + params["head"]["embedding_delta"]
    return with_word_embeddings(params["encoder"], embedding)


def generator_params(params: dict) -> dict:
    """{"encoder": generator with the shared E, "head": MLM head}: what `mlm_logits` takes."""
    head = params["head"]
    return {"encoder": with_word_embeddings(head["generator"], word_embeddings(params["encoder"])),
            "head": {"transform": head["transform"], "bias": head["bias"]}}


def sample_columns(logits: jax.Array, uniform: jax.Array) -> jax.Array:
    """One draw per row of `logits` (..., V) from its softmax, by inverting the CDF at `uniform` (...).

    Needs one random number per position, where `jax.random.categorical` draws V Gumbel numbers per
    position: ~24M threefry draws per CPU step at 680 positions x 36k ids (the reference it is
    tested against, tests/test_rtd.py)."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    cdf = jnp.cumsum(probs, axis=-1)
    column = jnp.sum(cdf < uniform[..., None] * cdf[..., -1:], axis=-1)
    return jnp.minimum(column, logits.shape[-1] - 1).astype(jnp.int32)


def replace_at(input_ids: jax.Array, positions: jax.Array, values: jax.Array, weights: jax.Array) -> jax.Array:
    """`input_ids` (B, N) with `values` (B, P) written at `positions` where `weights` > 0."""
    rows = jnp.arange(input_ids.shape[0])[:, None]
    # padding slots point past the row and are dropped, so they can never overwrite a real slot's write
    columns = jnp.where(weights > 0, positions, input_ids.shape[1])
    return input_ids.at[rows, columns].set(values.astype(input_ids.dtype), mode="drop")


def corrupt_with_samples(input_ids: jax.Array, positions: jax.Array, targets: jax.Array, weights: jax.Array,
                         columns: jax.Array, output_ids=None) -> tuple[jax.Array, jax.Array]:
    """(discriminator input (B, N), labels (B, N) int32: 1 = replaced) after writing the generator's
    sampled `columns` (B, P) at the predicted `positions` (weight > 0). `targets` are the original
    tokens as columns of the same softmax; a sample equal to the original token is "original"
    (ELECTRA): the label says whether the row's token now differs from the text's."""
    sampled = columns if output_ids is None else jnp.asarray(output_ids, jnp.int32)[columns]
    replaced = ((columns != targets) & (weights > 0)).astype(jnp.int32)
    corrupted = replace_at(input_ids, positions, sampled, weights)
    labels = replace_at(jnp.zeros(input_ids.shape, jnp.int32), positions, replaced, weights)
    return corrupted, labels


def rtd_loss_sums(config: EncoderConfig, generator_layers: int, params: dict, batch: dict, key: jax.Array, *,
                  output_ids=None, deterministic: bool = True, rngs=None) -> dict:
    """Sums over this device's batch: {"mlm": generator cross-entropy over predicted tokens, "rtd":
    discriminator binary cross-entropy over real tokens, "tokens": real tokens, "replaced": tokens
    the generator changed, "correct": tokens the discriminator labels right}.

    `batch` is an MLM batch (`pretrain_step.STEP_KEYS`); `mlm_targets` are columns of `output_ids`
    when given. `key` draws the generator's samples (no gradient flows through them)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    positions, targets, weights = (batch["mlm_positions"].astype(jnp.int32), batch["mlm_targets"], batch["mlm_weights"])
    # the generator's dropout masks must not repeat the discriminator's (same module names, same stream)
    generator_rngs = None if rngs is None else {name: jax.random.fold_in(k, 1) for name, k in rngs.items()}
    gen_logits = mlm_logits(generator_config(config, generator_layers), generator_params(params), ids, mask, positions,
                            output_ids=output_ids, deterministic=deterministic, rngs=generator_rngs)
    columns = sample_columns(jax.lax.stop_gradient(gen_logits), jax.random.uniform(key, positions.shape))
    corrupted, labels = corrupt_with_samples(ids, positions, targets, weights, columns, output_ids)
    hidden = DebertaEncoder(config).apply({"params": discriminator_encoder_params(params)}, corrupted, mask,
                                          deterministic=deterministic, rngs=rngs)
    logits = DiscriminatorHead(config).apply({"params": params["head"]["discriminator"]}, hidden.astype(jnp.float32))
    real = mask.astype(jnp.float32)
    bce = optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32))
    return {"mlm": mlm_loss_sum(gen_logits, targets, weights), "rtd": jnp.sum(bce * real), "tokens": jnp.sum(real),
            "replaced": jnp.sum(labels * real), "correct": jnp.sum(((logits > 0) == (labels > 0)) * real)}

