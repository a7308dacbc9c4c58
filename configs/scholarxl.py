"""Scholar-XL (SPEC section 8): LoRA lr 4e-4, whole documents (<= 1,000 tokens: no segmentation).

The shared folder holds only the dev split; set data.train_path/test_path to the full release
(QAQ123/Scholar-XL on the Hugging Face hub) to train.
"""
import pathlib
import sys

# config_flags loads this file by path: make `configs.base` importable from any working directory.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs.base import paper_config, shared_path  # noqa: E402


def get_config(arg=None):
    return paper_config("scholarxl", 4e-4, 1024, arg, dev_path=shared_path("scholar-xl", "dev.json"))
