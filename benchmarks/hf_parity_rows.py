"""Hugging Face parity split by row: real tokens vs padding, each against transformers in float32
and in float64 (the exact result, up to float64 rounding).

    PYTHONPATH=$PWD python benchmarks/hf_parity_rows.py

The models and the batch are the parity test's (`tests/deberta_helpers.py`: random 2-layer
`DebertaV2Model`s of three geometries, lengths [640, 333, 1]). It shows where float32 rounding
differs between the two implementations: under "full" attention a padding query attends uniformly
to all keys, so its output is a float32 mean of 640 value vectors, and the summation order decides
its last bits. Needs torch (the test extras).
"""
from __future__ import annotations

import os
import pathlib
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import torch  # noqa: E402

from sener_jax.convert import load_hf_deberta  # noqa: E402
from tests.deberta_helpers import (  # noqa: E402
    HF_CONFIGS, build_hf_deberta, flax_hidden, hf_hidden, row_max_abs_diff, token_batch,
)


def main() -> None:
    ids, mask = token_batch([640, 333, 1], 640, seed=2)
    print("| config | ours vs transformers f32: valid / padding | ours vs transformers f64 | transformers f32 vs f64 |")
    print("|---|---:|---:|---:|")
    for name in sorted(HF_CONFIGS):
        with tempfile.TemporaryDirectory() as directory:
            model = build_hf_deberta(name, pathlib.Path(directory))
            config, params = load_hf_deberta(pathlib.Path(directory))
        ours, theirs = flax_hidden(config, params, ids, mask), hf_hidden(model, ids, mask)
        with torch.no_grad():
            exact = model.double()(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
        cells = [row_max_abs_diff(ours, theirs, mask), row_max_abs_diff(ours, exact, mask), row_max_abs_diff(theirs, exact, mask)]
        print(f"| {name} | " + " | ".join(f"{v:.2g} / {p:.2g}" for v, p in cells) + " |")


if __name__ == "__main__":
    main()
