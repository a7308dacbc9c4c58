"""One entry point for banded attention, dispatching to an implementation by name.

Implementations share the contract written in `band_reference` (q, k, v (B, H, N, D); bias
(B, H, N, 2w+1); key_mask (B, N); optional global key). "reference" is the dense oracle,
"xla" the block-sparse XLA path, "pallas" the Pallas kernel (imported lazily so that the other
paths work where Pallas is unavailable).
"""
from __future__ import annotations

import jax

from .band_reference import banded_attention_reference
from .band_xla import banded_attention_xla

IMPLEMENTATIONS = ("reference", "xla", "pallas")


def banded_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array,
    key_mask: jax.Array,
    *,
    window: int,
    global_logit: jax.Array | None = None,
    global_value: jax.Array | None = None,
    impl: str = "xla",
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    **impl_options,
) -> jax.Array:
    """Banded attention (see `band_reference`) computed by `impl`.

    `impl_options` go to the implementation (`block` for "xla"; `interpret`, `block_q`,
    `block_k` for "pallas"). Attention-prob dropout is only available in "xla": the other
    implementations refuse a positive `dropout_rate` rather than silently skip it.
    """
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
    if dropout_rate > 0.0 and impl != "xla":
        raise ValueError(
            f"attention-prob dropout (rate {dropout_rate}) is only implemented for impl='xla', not {impl!r}; "
            "set attention_probs_dropout_prob=0 or use the xla implementation"
        )
    args = (q, k, v, bias, key_mask)
    common = dict(window=window, global_logit=global_logit, global_value=global_value)
    if impl == "reference":
        if impl_options:
            raise ValueError(f"impl='reference' takes no options, got {sorted(impl_options)}")
        return banded_attention_reference(*args, **common)
    if impl == "xla":
        unknown = set(impl_options) - {"block"}
        if unknown:
            raise ValueError(f"impl='xla' takes only the option 'block', got {sorted(unknown)}")
        return banded_attention_xla(*args, **common, dropout_rate=dropout_rate, dropout_rng=dropout_rng, **impl_options)
    # Deferred on purpose: the Pallas kernel module is only needed for impl='pallas', and importing it
    # where Pallas (or its GPU/TPU backend) is unavailable must not break the reference and xla paths.
    try:
        from .band_pallas import banded_attention_pallas
    except ImportError as error:  # the kernel module is optional at import time
        raise ImportError(f"impl='pallas' needs sener_jax.ops.band_pallas: {error}") from error
    return banded_attention_pallas(*args, **common, **impl_options)
