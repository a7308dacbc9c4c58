"""Profiling-07 (SPEC section 8): LoRA lr 2e-4, segments of 5,120 tokens with 128 words of overlap.

The shared folder holds only the dev split; set data.train_path/test_path to the full release
(QAQ123/Profiling-07 on the Hugging Face hub) to train.
"""
import pathlib
import sys

# config_flags loads this file by path: make `configs.base` importable from any working directory.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs.base import paper_config, shared_path  # noqa: E402


def get_config(arg=None):
    return paper_config("profiling07", 2e-4, 5120, arg, dev_path=shared_path("profiling-07", "dev.json"))
