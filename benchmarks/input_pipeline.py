"""The input pipeline against the device: host ms per batch, label bytes, batch shapes, compiles.

    PYTHONPATH=$PWD python benchmarks/input_pipeline.py --data /work/shared/data --docs 250
    PYTHONPATH=$PWD python benchmarks/input_pipeline.py --compiles-only   # the tiny run only

Part 1 (SciREX, 5,120 tokens, batch 16, w' = 128): host milliseconds per batch for reading,
tokenizing + segmenting, collating (dense reference labels vs sparse spans) and the host-to-device
transfer, the label bytes per batch, and the number of (tokens, words) shapes of one epoch with
the fixed power-of-two buckets vs `data.max_buckets` = 4.
Part 2 (configs/demo.py:tiny, one epoch + one dev evaluation): programs compiled and seconds spent
compiling, counted with jax.monitoring's backend-compile events, "before" (dense labels, fixed
buckets) and "after" (the defaults). Each configuration runs in a fresh process.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402

from sener_jax.data import BatchIterator, label_set, load_tokenizer, read_documents, segment_documents  # noqa: E402
from sener_jax.export import InferenceSettings  # noqa: E402

WINDOW, BATCH = 128, 16


def _ms(seconds: float, count: int) -> float:
    return round(1000 * seconds / max(count, 1), 2)


def host_pipeline(data: pathlib.Path, n_docs: int, max_batches: int) -> dict:
    start = time.perf_counter()
    docs = list(read_documents(data / "scirex/docs.jsonl.gz"))[:n_docs]
    read_s = time.perf_counter() - start
    tokenizer = load_tokenizer(data / "deberta-v3-tokenizer")
    settings = InferenceSettings(max_tokens=5120, overlap_words=128)
    start = time.perf_counter()
    segments = segment_documents(docs, tokenizer, settings.max_tokens, settings.overlap_words)
    segment_s = time.perf_counter() - start
    label_to_id = {label: i for i, label in enumerate(label_set(docs))}
    token_buckets, word_buckets = settings.buckets()
    common = dict(window=WINDOW, label_to_id=label_to_id, shuffle=True, seed=0)
    out = {"documents": len(docs), "segments": len(segments)}
    for name, options in (("before", dict(label_format="dense")),
                          ("after", dict(label_format="spans", bucket_plan=settings.bucket_plan(segments, 4)))):
        iterator = BatchIterator(segments, BATCH, tokenizer.pad_id, token_buckets, word_buckets, **common, **options)
        batches, collate_s, transfer_s, label_bytes = 0, 0.0, 0.0, []
        device = jax.devices()[0]
        for _ in range(min(max_batches, len(iterator))):
            t0 = time.perf_counter()
            batch = next(iterator)
            t1 = time.perf_counter()
            jax.block_until_ready(jax.device_put(batch.arrays, device))
            transfer_s += time.perf_counter() - t1
            collate_s += t1 - t0
            label_bytes.append(batch.arrays.get("labels", batch.arrays.get("label_spans")).nbytes)
            batches += 1
        n_batches = len(iterator)
        out[name] = {
            "shapes_per_epoch": len(iterator.bucket_shapes()),
            "batches_per_epoch": n_batches,
            "read_ms_per_batch": _ms(read_s, n_batches),
            "tokenize_segment_ms_per_batch": _ms(segment_s, n_batches),
            "collate_ms_per_batch": _ms(collate_s, batches),
            "transfer_ms_per_batch": _ms(transfer_s, batches),
            "label_bytes_per_batch_max": int(max(label_bytes)),
        }
        if name == "after":
            plan = options["bucket_plan"]
            out[name]["shapes"], out[name]["padding_fraction"] = plan.shapes, round(plan.padding_fraction, 4)
    return out


def compile_run(variant: str) -> dict:
    """One fresh process: demo tiny, one epoch + one dev evaluation; compile events counted."""
    code = f"""
import json, sys, tempfile, jax
sys.path.insert(0, {str(REPO)!r})
from configs import demo
from sener_jax import train
seconds = []
jax.monitoring.register_event_duration_secs_listener(
    lambda e, d, **k: seconds.append(d) if e == "/jax/core/compile/backend_compile_duration" else None)
config = demo.get_config("tiny")
config.train.num_epochs, config.train.max_steps = 1, 0
config.train.compilation_cache_dir, config.train.export = "", False
config.eval.splits = ("dev",)
if {variant!r} == "before":
    config.data.label_format, config.data.max_buckets = "dense", 0
train.train_and_evaluate(config, tempfile.mkdtemp())
print("RESULT", json.dumps({{"programs": len(seconds), "compile_s": round(sum(seconds), 2),
                            "programs_over_0.1s": sum(s > 0.1 for s in seconds)}}))
"""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    line = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
    if not line:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(line[-1][7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("SENER_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--docs", type=int, default=250)
    parser.add_argument("--batches", type=int, default=8, help="batches collated and transferred per variant")
    parser.add_argument("--compiles-only", action="store_true")
    args = parser.parse_args()
    result = {}
    if not args.compiles_only:
        result["scirex_5120"] = host_pipeline(pathlib.Path(args.data), args.docs, args.batches)
    result["tiny_compiles"] = {variant: compile_run(variant) for variant in ("before", "after")}
    print(json.dumps(result, indent=2, default=list))


if __name__ == "__main__":
    main()
