"""DeBERTa's masked-language-model head, for pretraining only (dropped when the encoder is saved).

Hugging Face's DebertaV2ForMaskedLM (`lm_predictions.lm_head` / `cls.predictions`): dense(hidden ->
embedding width) + activation + LayerNorm, then a decoder TIED to the word embeddings (logits =
h @ E^T) plus a per-token bias. Params: {"transform": {"dense", "LayerNorm"}, "bias": (vocab,)};
the decoder weight is the encoder's `embeddings/word_embeddings/embedding`, so there is one copy.
Logits are computed only at gathered positions (B, P), never for every token, and optionally only
over an OUTPUT VOCABULARY `output_ids` (the ids that occur in the corpus): the softmax is then exact
over the tokens the corpus can ask for, and a 128k-way projection shrinks to the corpus's ~36k ids.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sener_jax.models.deberta import ACTIVATIONS, DebertaEncoder, EncoderConfig


class MlmTransform(nn.Module):
    config: EncoderConfig

    @nn.compact
    def __call__(self, hidden: jax.Array) -> jax.Array:
        c = self.config
        width = c.embedding_size or c.hidden_size
        x = nn.Dense(width, kernel_init=nn.initializers.normal(0.02), name="dense")(hidden)
        x = ACTIVATIONS[c.hidden_act](x)
        return nn.LayerNorm(epsilon=c.layer_norm_eps, use_fast_variance=False, name="LayerNorm")(x)


def init_mlm_head_params(config: EncoderConfig, rng: jax.Array) -> dict:
    transform = MlmTransform(config).init(rng, jnp.zeros((1, config.hidden_size), jnp.float32))["params"]
    return {"transform": transform, "bias": jnp.zeros((config.vocab_size,), jnp.float32)}


def word_embeddings(encoder_params: dict) -> jax.Array:
    """The encoder's word-embedding matrix (vocab, width): the MLM decoder's tied weight."""
    return encoder_params["embeddings"]["word_embeddings"]["embedding"]


def mlm_logits(config: EncoderConfig, params: dict, input_ids, attention_mask, positions, *,
               output_ids=None, deterministic: bool = True, rngs=None) -> jax.Array:
    """(B, P, V) float32 logits at token `positions` (B, P) of the encoded batch: V = vocab, or
    len(output_ids) with column j scoring token `output_ids[j]` (targets must then be given as
    indices into `output_ids`, see `pretrain_step.output_targets`).

    `params` = {"encoder": DebertaEncoder params, "head": `init_mlm_head_params`}.
    """
    hidden = DebertaEncoder(config).apply({"params": params["encoder"]}, input_ids, attention_mask,
                                          deterministic=deterministic, rngs=rngs)
    gathered = jnp.take_along_axis(hidden.astype(jnp.float32), positions[..., None].astype(jnp.int32), axis=1)
    transformed = MlmTransform(config).apply({"params": params["head"]["transform"]}, gathered)
    embedding = word_embeddings(params["encoder"])
    bias = params["head"]["bias"]
    if output_ids is not None:
        ids = jnp.asarray(output_ids, jnp.int32)
        embedding, bias = embedding[ids], bias[ids]
    return transformed @ embedding.T.astype(jnp.float32) + bias


def mlm_loss_sum(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    """Sum over predicted tokens of weight * cross-entropy (divide by the global weight sum)."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return -jnp.sum(picked * weights)
