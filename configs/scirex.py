"""SciREX (SPEC section 8): LoRA lr 3e-4, segments of 5,120 tokens with 128 words of overlap.

The shared folder holds only SciREX's train split (`scirex/docs.jsonl.gz`, 250 papers); by
default it is split deterministically by document order into train/dev/test (80/10/10). With the
full release (allenai/SciREX or QAQ123/SciREX) set data.train_path/dev_path/test_path instead:
the authors train and evaluate on that official 306/66/66 split (train.jsonl / dev.jsonl /
test.jsonl of the release, SciREX format, read as such), and a set `data.train_path` always wins
over `single_file`. The `:paper` variant changes no paths: point it at the release for the
paper's split (with the shared 250 documents it still splits them 80/10/10 by order).
"""
import pathlib
import sys

# config_flags loads this file by path: make `configs.base` importable from any working directory.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs.base import paper_config, shared_path  # noqa: E402


def get_config(arg=None):
    return paper_config("scirex", 3e-4, 5120, arg, single_file=shared_path("scirex", "docs.jsonl.gz"))
