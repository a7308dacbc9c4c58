"""Old config spellings, still read with a DeprecationWarning (configs, exports and checkpoints
written before a rename keep loading).

Renames so far:
  - span head `window` (w', the largest |j - i| scored) -> `max_span_words` = w' + 1 (the longest
    span in words); `window` also named the encoder's attention half-width, in tokens.
  - implementation name "dense" -> "reference" for the plain, literal implementations (attention,
    span head, word pooling), the word `sener_jax.ops` always used.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

REFERENCE = "reference"
_OLD_REFERENCE = "dense"


def reference_impl(value: str, field: str) -> str:
    """"dense" (the old name of every reference implementation) -> "reference", with a warning."""
    if value == _OLD_REFERENCE:
        warnings.warn(f'{field}="dense" is deprecated: use "reference"', DeprecationWarning, stacklevel=3)
        return REFERENCE
    return value


def head_fields(values: Mapping[str, Any], origin: str = "span head config") -> dict[str, Any]:
    """Span-head fields with the old `window` (w') turned into `max_span_words` (w' + 1)."""
    out = dict(values)
    if "window" in out:
        window = out.pop("window")
        if "max_span_words" in out:
            raise ValueError(f"{origin}: both the old `window` and `max_span_words` are set; keep max_span_words")
        warnings.warn(
            f"{origin}: head `window`={window} is deprecated: use max_span_words={int(window) + 1} "
            "(the longest span in words; window was the largest |j - i|)",
            DeprecationWarning, stacklevel=3,
        )
        out["max_span_words"] = int(window) + 1
    if "impl" in out:
        out["impl"] = reference_impl(out["impl"], f"{origin}: impl")
    return out


def remat_policy(value: Any, field: str) -> Any:
    """The old boolean `remat` -> "layer" (True) / "none" (False), with a warning."""
    if isinstance(value, bool):
        name = "layer" if value else "none"
        warnings.warn(f'{field}={value} is deprecated: use "{name}"', DeprecationWarning, stacklevel=3)
        return name
    return value
