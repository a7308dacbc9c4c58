"""The full SeNER training step on one GPU: compile time, step time, MFU and memory vs the planner.

The step is the one the library trains with (`sener_jax.train_step.make_train_step`, compiled by
`train_step.compile_train_step` on one device): configs/scirex.py (DeBERTa-v3-large geometry, 24
scanned layers, LoRA rank 8, arrow attention w=128, span head), `model.pretrained=""` (random
weights, no download), encoder compute dtype bfloat16 (params float32), remat "layer". Points
(tokens x batch): 5,120 x 2 (the paper's batch), then 16k, 32k and 64k tokens at batch 1; words =
`memory.words_for(tokens)` (~0.8 per token), batch shapes from `train_step.abstract_batch`, filled
with random token ids, one segment of words over the tokens and sparse random labels.

Per point, in its own child process (so a crash or OOM loses one row and the device peak of a row
is its own): lower+compile time; XLA's compiled memory analysis of that same compiled step (what
`memory.predict_memory(..., method="compiled")` reports when run on this backend: the planner's
prediction) and, unless --no-analytic, the planner's analytic predictor; then --warmup steps and
--steps timed steps (each `block_until_ready`), median step time, tokens/s (batch x tokens / step),
and the device's `memory_stats()["peak_bytes_in_use"]` (n/a where the backend has none, e.g. CPU).

FLOPs per step, two figures:
  - model (analytic, used for MFU): `gpu_encoder.step_flops` for the frozen encoder (per layer
    2x the forward of the dense projections, forward + input gradients, no weight gradients since
    LoRA freezes them, and 3x the forward of the banded attention products) + 6 x trainable
    params (LoRA + head) x tokens. No recomputation (remat) counted: model FLOPs, not hardware
    FLOPs. The span head's band/BiSPA products are not counted (about 1% at 5,120 tokens).
  - XLA: `compiled.cost_analysis()["flops"]` of the compiled step, where the backend gives one.
    It counts what XLA runs (remat recompute included) but a while loop's body ONCE (checked on
    CPU: a 10-step scan of a matmul reports the FLOPs of one), so with scanned layers it is far
    below the model figure: shown for reference, not used for MFU.
MFU = model FLOPs / step time / peak dense bf16 FLOP/s of the device kind (PEAK_FLOPS; n/a when the
kind is unknown, e.g. CPU).

The table ($OUT/gpu_train_step.md, or --out) is rewritten after every point: a run killed at the
device's 10-minute limit keeps the rows it finished.

Dependencies on the lent GPU machine: its image has jax, flax, optax, orbax, absl-py and PyYAML but
not ml_collections, which travels as a wheel in the git-ignored folder .whl/ (downloaded here once,
from the repository root):
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 -d .whl ml_collections==1.1.0
`gpu_encoder.sh --train-step` installs every .whl/*.whl into /tmp/site (no index) and puts it on
PYTHONPATH before running this script. The device call that gives the table:
  run(command="set -o pipefail; bash benchmarks/gpu_encoder.sh --train-step 2>&1 | tee $OUT/gpu_train_step.log",
      carry=[".whl"], timeout_s=600)
(the default --budget-s 540 leaves a minute of the 10-minute command limit for the start.)

Usage (repository root):
  bash benchmarks/gpu_encoder.sh --train-step             # on the GPU machine (installs carried wheels)
  python benchmarks/gpu_train_step.py --points 5120x2 16384x1
  python benchmarks/gpu_train_step.py --smoke --out /tmp/t.md   # tiny config on CPU: a pipeline check
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import jax
import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
for _path in (str(REPO_ROOT), str(REPO_ROOT / "benchmarks")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from configs.scirex import get_config  # noqa: E402
from gpu_encoder import _Watchdog, _gib, _is_out_of_memory, step_flops  # noqa: E402
from sener_jax import memory, train_step  # noqa: E402

ROW_PREFIX = "GPU_TRAIN_STEP_ROW "
FULL_POINTS = ("5120x2", "16384x1", "32768x1", "65536x1")
SMOKE_POINTS = ("128x2", "256x1")
# Peak dense bf16 tensor-core FLOP/s (vendor figures, no sparsity), by a substring of device_kind.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
COLUMNS = ("tokens", "batch", "words", "status", "compile (s)", "step (s)", "tokens/s", "model TFLOP/step",
           "XLA TFLOP/step", "MFU", "predicted compiled (GiB)", "predicted analytic (GiB)", "device peak (GiB)")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", nargs="+", default=None,
                        help=f"TOKENSxBATCH points (default {' '.join(FULL_POINTS)}; smoke {' '.join(SMOKE_POINTS)})")
    parser.add_argument("--smoke", action="store_true", help="configs/scirex.py:tiny at short lengths (CPU check)")
    parser.add_argument("--dtype", default="bfloat16", help="encoder compute dtype")
    parser.add_argument("--remat", default="layer", help="model.encoder.remat policy")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-analytic", action="store_true", help="skip the analytic memory predictor")
    parser.add_argument("--in-process", action="store_true", help="run every point in this process (no children)")
    parser.add_argument("--budget-s", type=float, default=540.0,
                        help="wall-clock budget; points that would start after it are marked skipped")
    parser.add_argument("--out", default=None, help="markdown path (default $OUT/gpu_train_step.md when $OUT is set)")
    parser.add_argument("--child-point", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.points = args.points or list(SMOKE_POINTS if args.smoke else FULL_POINTS)
    for point in args.points:
        parse_point(point)  # an error now, not in a child
    return args


def parse_point(text: str) -> tuple[int, int]:
    try:
        tokens, batch = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--points: {text!r} is not TOKENSxBATCH (e.g. 5120x2)") from None
    if tokens < 2 or batch < 1:
        raise SystemExit(f"--points: {text!r} needs tokens >= 2 and batch >= 1")
    return tokens, batch


def build_config(args):
    """configs/scirex.py (or its :tiny variant) with random weights and the benchmarked remat."""
    config = get_config("tiny" if args.smoke else None)
    config.model.pretrained = ""
    config.model.encoder.remat = args.remat
    return config


def vocab_size(config) -> int:
    # The tiny config takes its vocabulary from the tokenizer (0): a fixed size keeps the smoke run offline.
    return int(config.model.encoder.vocab_size) or 1000


def synthetic_batch(abstract: dict, vocab: int, seed: int = 0) -> dict:
    """Arrays of the shapes and dtypes of `abstract` (train_step.abstract_batch): random token ids,
    every token and word real, words spread evenly over the tokens, ~0.1% positive label cells."""
    rng = np.random.default_rng(seed)
    batch, tokens = abstract["input_ids"].shape
    words = abstract["word_mask"].shape[1]
    word_index = np.minimum(np.arange(tokens) * words // tokens, words - 1)
    arrays = {
        "input_ids": rng.integers(5, vocab, (batch, tokens)),
        "attention_mask": np.ones((batch, tokens)),
        "word_index": np.broadcast_to(word_index, (batch, tokens)),
        "word_mask": np.ones((batch, words)),
        "labels": rng.random(abstract["labels"].shape) < 0.001,
        "row_weight": np.ones((batch,)),
    }
    return {k: np.asarray(v).astype(abstract[k].dtype) for k, v in arrays.items()}


def model_flops(model_config, trainable_params: int, tokens: int) -> float:
    """Analytic model FLOPs of one step over `tokens` tokens (formula in the module docstring)."""
    enc = model_config.encoder
    encoder = step_flops(tokens, enc.num_hidden_layers, enc.hidden_size, enc.intermediate_size, enc.window)
    return encoder + 6.0 * trainable_params * tokens


def xla_flops(compiled) -> float | None:
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends raise instead of returning None
        return None
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per program
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def peak_flops(device_kind: str) -> float | None:
    return next((value for key, value in PEAK_FLOPS.items() if key in device_kind), None)


def device_peak_bytes(device) -> int | None:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _status_of(error: BaseException, stage: str) -> str:
    kind = "OOM" if _is_out_of_memory(error) else "failed"
    text = " ".join(f"{type(error).__name__}: {error}".split())[:160].replace("|", "/")
    return f"{kind} in {stage} ({text})"


def _prepare(args, tokens: int, batch: int, row: dict):
    """Compile the step for abstract inputs; fills the row's compile and prediction fields."""
    config = build_config(args)
    model_config = memory.model_config_for(config, dtype=args.dtype, vocab_size=vocab_size(config),
                                           num_types=memory.DEFAULT_NUM_TYPES)
    words = memory.words_for(tokens)
    row["words"] = words
    state, frozen, optimizer = train_step.abstract_train_state(config, model_config)
    abstract = train_step.abstract_batch(batch, tokens, words, model_config.head.band_half_width,
                                         model_config.head.num_types)
    mesh = train_step.make_mesh(jax.devices()[:1])
    start = time.perf_counter()
    compiled = train_step.compile_train_step(model_config, optimizer, state, frozen, abstract, mesh)
    row["compile_s"] = time.perf_counter() - start
    row["predicted_compiled_bytes"] = train_step.memory_analysis(compiled)["peak"]
    trainable = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["trainable"]))
    row["model_flops"] = model_flops(model_config, trainable, batch * tokens)
    row["xla_flops"] = xla_flops(compiled)
    if not args.no_analytic:
        row["predicted_analytic_bytes"] = memory.predict_memory(
            config, tokens, batch, args.dtype, "train", method="analytic", n_words=words,
            vocab_size=vocab_size(config), num_types=memory.DEFAULT_NUM_TYPES).peak
    return config, model_config, compiled, abstract, mesh


def _time_steps(args, config, model_config, compiled, abstract, mesh, row: dict) -> None:
    state, frozen, _ = train_step.create_train_state(config, model_config, 1000, jax.random.PRNGKey(0))
    state, frozen = train_step.replicate(state, mesh), train_step.replicate(frozen, mesh)
    arrays = train_step.shard_batch(synthetic_batch(abstract, model_config.encoder.vocab_size), mesh)
    times = []
    for index in range(args.warmup + args.steps):
        start = time.perf_counter()
        state, metrics = compiled(state, frozen, arrays)
        jax.block_until_ready((state, metrics))
        if index >= args.warmup:
            times.append(time.perf_counter() - start)
    row["step_s"] = statistics.median(times)
    row["loss"] = float(metrics["loss"])
    row["tokens_per_s"] = row["batch"] * row["tokens"] / row["step_s"]
    peak = peak_flops(row["device"])
    row["mfu"] = row["model_flops"] / row["step_s"] / peak if peak else None


def run_point(args, point: str) -> dict:
    """One row: compile, predict, time. A failure at any stage is recorded in `status`, not raised."""
    tokens, batch = parse_point(point)
    device = jax.devices()[0]
    row = {"tokens": tokens, "batch": batch, "device": device.device_kind, "status": "ok"}
    stage = "compile"
    try:
        prepared = _prepare(args, tokens, batch, row)
        stage = "step"
        _time_steps(args, *prepared, row)
    except Exception as error:  # noqa: BLE001 - one point's OOM or compile failure must not stop the table
        row["status"] = _status_of(error, stage)
    row["device_peak_bytes"] = device_peak_bytes(device)
    return row


def _cell(row: dict, key: str, fmt: str, scale: float = 1.0) -> str:
    value = row.get(key)
    return "n/a" if value is None else format(value * scale, fmt)


def format_table(rows: list[dict], args) -> str:
    kinds = sorted({r["device"] for r in rows if r.get("device")})
    head = [
        f"Train step of configs/scirex.py{':tiny' if args.smoke else ''} (random weights), encoder {args.dtype}, "
        f"remat={args.remat}, median of {args.steps} steps after {args.warmup} warm-up; device: {', '.join(kinds)}.",
        "MFU = model TFLOP/step (analytic) / step / peak dense bf16 (H100/H200 989, A100 312 TFLOP/s); "
        "XLA TFLOP/step counts a scanned layer once (reference only). Predicted = the planner "
        "(XLA's compiled memory analysis of this step on this backend; analytic predictor).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---:|" * 3 + "---|" + "---:|" * (len(COLUMNS) - 4),
    ]
    for r in rows:
        cells = [str(r["tokens"]), str(r["batch"]), str(r.get("words", "")), r["status"],
                 _cell(r, "compile_s", ".1f"), _cell(r, "step_s", ".4f"), _cell(r, "tokens_per_s", ".0f"),
                 _cell(r, "model_flops", ".4g", 1e-12), _cell(r, "xla_flops", ".4g", 1e-12),
                 _cell(r, "mfu", ".1%"), _gib(r.get("predicted_compiled_bytes")) or "n/a",
                 _gib(r.get("predicted_analytic_bytes")) or "n/a", _gib(r.get("device_peak_bytes")) or "n/a"]
        head.append("| " + " | ".join(cells) + " |")
    return "\n".join(head) + "\n"


def _write(path, rows, args) -> None:
    if not path:
        return
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/gpu_train_step.py " + " ".join(sys.argv[1:])
    pathlib.Path(path).write_text(f"Command: `{command.strip()}`\n\n" + format_table(rows, args))


def _child(args, point: str, deadline: float) -> dict:
    """Run one point in a child process (killed at `deadline`); a crash becomes the row's status."""
    command = [sys.executable, str(pathlib.Path(__file__).resolve()), "--child-point", point, "--dtype", args.dtype,
               "--remat", args.remat, "--warmup", str(args.warmup), "--steps", str(args.steps)]
    command += ["--smoke"] * args.smoke + ["--no-analytic"] * args.no_analytic
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = _Watchdog(process, deadline)
    row, tail = None, []
    for line in process.stdout:
        if line.startswith(ROW_PREFIX):
            row = json.loads(line[len(ROW_PREFIX):])
        else:
            tail = (tail + [line.rstrip()])[-8:]
    returncode = process.wait()
    watchdog.cancel()
    if row is None:
        tokens, batch = parse_point(point)
        print(f"point {point}: child exited with {returncode}:\n  " + "\n  ".join(tail), file=sys.stderr)
        row = {"tokens": tokens, "batch": batch, "status": f"crashed (exit {returncode}; killed at the budget?)"}
    return row


def run_all(args) -> list[dict]:
    out = args.out or (os.path.join(os.environ["OUT"], "gpu_train_step.md") if os.environ.get("OUT") else None)
    deadline = time.time() + args.budget_s
    rows = []
    for point in args.points:
        if time.time() >= deadline:
            tokens, batch = parse_point(point)
            row = {"tokens": tokens, "batch": batch, "status": "skipped (budget)"}
        else:
            row = run_point(args, point) if args.in_process else _child(args, point, deadline)
        rows.append(row)
        print(ROW_PREFIX + json.dumps(row), flush=True)
        _write(out, rows, args)  # after every point: a run killed later keeps this row
    print(format_table(rows, args))
    if out:
        print(f"wrote {out}")
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child_point:
        print(ROW_PREFIX + json.dumps(run_point(args, args.child_point)), flush=True)
    else:
        run_all(args)


if __name__ == "__main__":
    main()
