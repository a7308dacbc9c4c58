"""Shared builders for the encoder tests: tiny random Hugging Face DeBERTa-v2 models saved to
disk, token batches with padding, and fully random Flax encoder params."""
from __future__ import annotations

import functools
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from sener_jax.models.deberta import DebertaEncoder, EncoderConfig

VOCAB = 101

# Tiny geometries that exercise every branch of the Hugging Face computation.
HF_CONFIGS = {
    # DeBERTa-v3 layout: 256 log buckets over 512 positions, shared keys, LayerNorm'd rel table.
    "v3_256_buckets": dict(
        hidden_size=64, num_attention_heads=4, intermediate_size=96, position_buckets=256,
        max_relative_positions=512, pos_att_type=["p2c", "c2p"], share_att_key=True,
        norm_rel_ebd="layer_norm", position_biased_input=False,
    ),
    # 8 buckets over 16 positions: a few hundred tokens are deep in the log buckets; width 48, 3 heads.
    "small_buckets_w48": dict(
        hidden_size=48, num_attention_heads=3, intermediate_size=80, position_buckets=8,
        max_relative_positions=16, pos_att_type="p2c|c2p", share_att_key=True,
        norm_rel_ebd="layer_norm", position_biased_input=False,
    ),
    # DeBERTa-v2 style: separate position projections, absolute positions, token types, no log
    # buckets (clipped distances), c2p only, an embedding projection, width 36.
    "v2_style_c2p": dict(
        hidden_size=36, num_attention_heads=3, intermediate_size=50, position_buckets=-1,
        max_relative_positions=24, pos_att_type=["c2p"], share_att_key=False, norm_rel_ebd="none",
        position_biased_input=True, type_vocab_size=2, max_position_embeddings=700, embedding_size=20,
    ),
}


def _randomise(model, seed: int) -> None:
    """Every parameter random (LayerNorms and biases too), scaled so attention is not uniform."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "LayerNorm.weight" in name:
                value = 1.0 + 0.2 * torch.randn(param.shape, generator=generator)
            elif name.endswith("bias"):
                value = 0.1 * torch.randn(param.shape, generator=generator)
            elif param.ndim == 2 and "embeddings" in name:
                value = torch.randn(param.shape, generator=generator)
            else:
                value = 1.5 / param.shape[1] ** 0.5 * torch.randn(param.shape, generator=generator)
            param.copy_(value)


def build_hf_deberta(name: str, directory: pathlib.Path):
    """A random 2-layer transformers.DebertaV2Model of geometry HF_CONFIGS[name], saved to `directory`."""
    import transformers

    config = transformers.DebertaV2Config(
        vocab_size=VOCAB, num_hidden_layers=2, relative_attention=True, hidden_act="gelu", **HF_CONFIGS[name]
    )
    model = transformers.DebertaV2Model(config).eval()
    _randomise(model, seed=sorted(HF_CONFIGS).index(name))
    model.save_pretrained(directory)
    return model


def token_batch(lengths: list[int], n: int, seed: int, vocab: int = VOCAB):
    """(ids, mask) int64 numpy, (len(lengths), n), padding after each length."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=(len(lengths), n))
    mask = (np.arange(n)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
    return np.where(mask == 1, ids, 0), mask


def hf_hidden(model, ids, mask) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()


def row_max_abs_diff(out: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(valid, padding): the max abs difference over the hidden states of the real tokens and of the
    padding positions (0.0 when there is none), computed in float64."""
    diff = np.abs(np.asarray(out, np.float64) - np.asarray(reference, np.float64)).max(-1)
    valid = np.asarray(mask).astype(bool)
    return float(diff[valid].max()), float(diff[~valid].max()) if (~valid).any() else 0.0


def flax_hidden(config: EncoderConfig, params, ids, mask) -> np.ndarray:
    out = DebertaEncoder(config).apply({"params": params}, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))
    return np.asarray(out)


def random_encoder_params(config: EncoderConfig, seed: int) -> dict:
    """Every leaf random (no zero biases / unit LayerNorms), without compiling a jax PRNG
    (threefry takes XLA:CPU seconds to compile)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: DebertaEncoder(config).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32))["params"])

    def leaf(path, shape):
        name = path[-1].key
        scale = 0.2 if name == "bias" else 1.0 / math.sqrt(shape.shape[-2]) if name in ("kernel", "lora_a", "lora_b") else 0.5  # [-2]: fan-in, also for stacked (layers, in, out) leaves
        value = rng.normal(size=shape.shape) * scale + (1.0 if name == "scale" else 0.0)
        return jnp.asarray(value, jnp.float32)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


@functools.lru_cache(maxsize=None)
def encoder_grad_fn(config: EncoderConfig):
    """Jitted (params, ids, mask, projection) -> ((sum(out * projection), out), d/d params): one compile
    per config, shared by the tests that compare encoder variants' outputs and gradients."""
    def loss(params, ids, mask, projection):
        out = DebertaEncoder(config).apply({"params": params}, ids, mask)
        return jnp.sum(out * projection), out

    return jax.jit(jax.value_and_grad(loss, has_aux=True))
