"""The analytic memory model: the training / inference step's peak bytes as named terms.

The terms follow the program `train_step.make_train_step` compiles (no compilation here):

  arguments   params (all leaves) + optimizer state + the batch: exact byte counts.
  grads       one gradient buffer per trainable leaf, live through the whole backward pass.
  saved       what the forward keeps for the backward pass. The encoder's layers run under
              `nn.scan` with `nn.remat` ("layer"): only each layer's input hidden states
              (B, N, hidden) float32 are saved, plus the embeddings' output; the BiSPA blocks
              are one rematerialised scan (their saved inputs are inside `head_working_bytes`).
  phases      the backward pass runs the head first, then the layers one at a time; each phase
              needs its own working set on top of the saved tensors, and the peak is the larger:
                head     `head_working_bytes` + the word states and their gradient
                encoder  `layer_working_bytes` (one layer recomputed and differentiated) + the
                         incoming and outgoing hidden-state gradients.

The working sets are counts of the program's largest tensors, each named by its shape. The counts
were read off XLA:CPU's buffer assignment of the SciREX geometry (benchmarks/RESULTS.md, "band bias
and the analytic predictor"); they are what to update when a component's memory changes (e.g. the
span head's tensors per word). Without `remat="layer"` every layer's working set stays saved.
"""
from __future__ import annotations

import math

import numpy as np

from sener_jax.models.deberta import EncoderConfig
from sener_jax.models.span_head import SpanHeadConfig

F32 = 4
# Span head, training (forward + backward of the band head, BiSPA blocks rematerialised and their
# row chunks written in place): live (B, L, K, c) float32 tensors per word at its backward peak.
# benchmarks/head_scaling.py (no dropout) measures 0.381 MiB per word at K = 257, c = 32, L = 1,024:
# 12.1 such tensors.
HEAD_TRAIN_TENSORS = 12
# Training with dropout in the head (mlp_dropout or bispa_dropout > 0, the configs' default): the
# band-layout keep masks and the dropped copies. Read off the compiled SciREX step (dropout on) at
# 5,120 x 2, 16,384 x 1 and 65,536 x 1 tokens: its temporaries less the saved hidden states are 22
# such tensors per word at all three, so 22 - 12. CALIBRATED on that geometry, not derived.
HEAD_DROPOUT_TENSORS = 10
# Inference: the forward's live (B, L, K, c) tensors (scores, one block's input and output, the
# row chunk's attention maps summed over chunks stay below one tensor).
HEAD_INFER_TENSORS = 4
# One encoder layer recomputed and differentiated (arrow / sliding, xla impl): live tensors at its
# peak, by kind: band logits-sized (B, H, N_pad, slots) float32 (logits, probabilities, their
# gradients, masks and the skewed bias), bias-sized (B, H, N, 2w+1) (the bias and its gradient),
# FFN-sized (B, N, intermediate) and hidden-sized (B, N, hidden). XLA:CPU, 8,192 tokens: 1.92 GiB.
LAYER_TRAIN_TENSORS = {"band": 6, "bias": 2, "ffn": 3, "hidden": 4}
LAYER_INFER_TENSORS = {"band": 2, "bias": 1, "ffn": 1, "hidden": 3}


def _itemsize(dtype: str) -> int:
    return np.dtype(dtype).itemsize


def attention_cells(config: EncoderConfig, n_tokens: int) -> tuple[int, int]:
    """(query rows, key slots per row) of one head's logits: N x N for "full" or the dense
    reference, else the XLA band path's blocks of `window` queries against 3 key blocks."""
    if config.attention == "full" or config.attention_impl == "reference":
        return n_tokens, n_tokens
    block = max(min(config.window, n_tokens), 1)
    neighbours = math.ceil(config.window / block)
    rows = math.ceil(n_tokens / block) * block
    return rows, (2 * neighbours + 1) * block


def layer_tensor_bytes(config: EncoderConfig, batch: int, n_tokens: int) -> dict[str, int]:
    """Bytes of one tensor of each kind counted by LAYER_*_TENSORS, for B rows of N tokens."""
    rows, slots = attention_cells(config, n_tokens)
    heads = config.num_attention_heads
    banded = config.attention != "full" and config.attention_impl != "reference"
    return {
        "band": batch * heads * rows * slots * F32,
        # The c2p / p2c dots accumulate (and, on XLA:CPU, are written) in float32 in every mode.
        "bias": batch * heads * n_tokens * (2 * config.window + 1) * F32 if banded else 0,
        "ffn": batch * n_tokens * config.intermediate_size * F32,
        "hidden": batch * n_tokens * config.hidden_size * F32,
    }


def layer_working_bytes(config: EncoderConfig, batch: int, n_tokens: int, mode: str) -> int:
    """One encoder layer's working set: recomputed and differentiated ("train") or run ("infer")."""
    counts = LAYER_TRAIN_TENSORS if mode == "train" else LAYER_INFER_TENSORS
    sizes = layer_tensor_bytes(config, batch, n_tokens)
    return sum(counts[kind] * sizes[kind] for kind in counts)


def head_working_bytes(config: SpanHeadConfig, batch: int, n_words: int, mode: str) -> int:
    """The span head's working set: HEAD_*_TENSORS (B, L, K, c) float32 tensors."""
    count = HEAD_INFER_TENSORS
    if mode == "train":
        dropout = config.mlp_dropout > 0.0 or config.bispa_dropout > 0.0
        count = HEAD_TRAIN_TENSORS + (HEAD_DROPOUT_TENSORS if dropout else 0)
    return count * batch * n_words * config.band_width * config.channels * F32


def encoder_saved_bytes(config: EncoderConfig, batch: int, n_tokens: int) -> int:
    """Hidden states kept for the backward pass: each layer's input (the scan's per-layer carry)
    and the last layer's output; without per-layer remat, every layer's whole working set."""
    hidden = batch * n_tokens * config.hidden_size * F32
    if config.remat == "none":
        return (config.num_hidden_layers + 1) * hidden + config.num_hidden_layers * layer_working_bytes(
            config, batch, n_tokens, "train")
    return (config.num_hidden_layers + 1) * hidden


def step_terms(model_config, batch: int, n_tokens: int, n_words: int, mode: str, grads: int) -> dict[str, int]:
    """Working bytes of one step beyond its arguments, term by term (see the module docstring)."""
    enc, head = model_config.encoder, model_config.head
    hidden = batch * n_tokens * enc.hidden_size * F32
    words = batch * n_words * enc.hidden_size * F32
    layer = layer_working_bytes(enc, batch, n_tokens, mode)
    head_set = head_working_bytes(head, batch, n_words, mode)
    if mode != "train":  # forward only: one layer at a time, then the head on the pooled words
        return {"encoder_phase": hidden + layer, "head_phase": hidden + words + head_set}
    saved = encoder_saved_bytes(enc, batch, n_tokens)
    return {
        "grads": grads,
        "saved": saved,
        "head_phase": 2 * words + hidden + head_set,
        "encoder_phase": 2 * hidden + layer,
    }


def working_bytes(terms: dict[str, int]) -> int:
    """The step's peak beyond its arguments: the always-live terms plus the larger phase."""
    phases = max(terms["encoder_phase"], terms["head_phase"])
    return sum(v for k, v in terms.items() if not k.endswith("_phase")) + phases
