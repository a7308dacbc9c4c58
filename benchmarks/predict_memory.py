"""Peak memory of `predict_file` against the size of its input (inputs must be streamed).

    PYTHONPATH=$PWD python benchmarks/predict_memory.py --docs 2000 20000

For each size, a fresh process: a tiny randomly initialised export, one warm-up file (compiles),
then `predict_file` on N documents; it reports the growth of peak RSS (`resource.getrusage`,
ru_maxrss) from after the warm-up to the end. Each document is a short sentence padded with
whitespace to --doc-bytes, so the text volume grows with N while the model work per document stays
small (whitespace makes no words). With a streamed input the growth should not scale with N.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def write_input(path: pathlib.Path, count: int, doc_bytes: int) -> None:
    sentence = "Ulric Brandt works at Norvale Institute of Technology since {}."
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(count):
            text = sentence.format(1900 + i % 100)
            handle.write(json.dumps({"text": text + " " * max(doc_bytes - len(text), 0)}) + "\n")


def one_run(count: int, doc_bytes: int, batch_size: int) -> dict:
    import time

    import jax

    from configs import demo
    from sener_jax import train
    from sener_jax.export import export_model
    from sener_jax.models.sener import init_params
    from sener_jax.predict import predict_file

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        config = demo.get_config("tiny")
        tokenizer = train.load_tokenizer("synthetic")
        labels = ["name", "organization"]
        model_config = train.model_config_from(config, tokenizer.vocab_size, len(labels))
        params = init_params(model_config, jax.random.PRNGKey(0))
        export_model(tmp / "export", model_config, params, tokenizer, labels, train.inference_settings(config))
        write_input(tmp / "warm.jsonl", 2 * batch_size, doc_bytes)
        predict_file(tmp / "export", tmp / "warm.jsonl", tmp / "warm.out.jsonl", batch_size=batch_size)
        write_input(tmp / "in.jsonl", count, doc_bytes)
        before = peak_rss_mib()
        start = time.perf_counter()
        written = predict_file(tmp / "export", tmp / "in.jsonl", tmp / "out.jsonl", batch_size=batch_size)
        seconds = time.perf_counter() - start
        after = peak_rss_mib()
        return {"docs": count, "written": written, "input_mib": (tmp / "in.jsonl").stat().st_size / 2**20,
                "peak_rss_before_mib": before, "peak_rss_after_mib": after, "growth_mib": after - before,
                "seconds": seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--doc-bytes", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child process of one size
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one_run(args.one, args.doc_bytes, args.batch_size)))
        return 0
    print(f"{'docs':>7} {'input MiB':>10} {'peak RSS growth MiB':>20} {'seconds':>8}")
    for count in args.docs:
        result = subprocess.run([sys.executable, __file__, "--one", str(count), "--doc-bytes", str(args.doc_bytes),
                                 "--batch-size", str(args.batch_size)], capture_output=True, text=True, check=True)
        row = json.loads(result.stdout.strip().splitlines()[-1])
        assert row["written"] == count, row
        print(f"{row['docs']:>7} {row['input_mib']:>10.1f} {row['growth_mib']:>20.1f} {row['seconds']:>8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
