"""The documents of a run: every configured split read (or, for the synthetic demo, generated),
limited and labelled, with the tokenizer: `load_data(config, workdir) -> DataBundle`."""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from typing import Any

import ml_collections

from sener_jax.data.documents import Document, label_set
from sener_jax.data.readers import read_documents
from sener_jax.data.synthetic import PRESETS, write_synthetic_dataset
from sener_jax.data.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")


@dataclasses.dataclass
class DataBundle:
    splits: dict[str, list[Document]]
    tokenizer: Any
    labels: list[str]


def _limit(documents, n: int):
    return list(documents)[:n] if n and n > 0 else list(documents)


def split_by_order(documents: list[Document], fractions) -> dict[str, list[Document]]:
    """Deterministic train/dev/test split by document order (first 80% train, next 10% dev, rest test)."""
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"data.split_fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    n = len(documents)
    n_train = int(round(fractions[0] * n))
    n_dev = int(round(fractions[1] * n))
    return {"train": documents[:n_train], "dev": documents[n_train : n_train + n_dev], "test": documents[n_train + n_dev :]}


def write_synthetic_data(directory: pathlib.Path, synthetic: ml_collections.ConfigDict) -> dict[str, str]:
    """Generates the synthetic homepages into `directory` (once; same seed, same files)."""
    sizes = dataclasses.replace(
        PRESETS[synthetic.preset],
        **{f"n_{split}": synthetic[f"n_{split}"] for split in SPLITS if synthetic.get(f"n_{split}", 0) > 0},
    )
    directory.mkdir(parents=True, exist_ok=True)
    stamp = directory / "synthetic.json"
    description = json.dumps({"seed": synthetic.seed, "sizes": dataclasses.asdict(sizes)}, sort_keys=True)
    paths = {split: str(directory / f"{split}.jsonl") for split in SPLITS}
    if not stamp.is_file() or stamp.read_text() != description:
        logger.info("generating synthetic data into %s: %s", directory,
                    {"train": sizes.n_train, "dev": sizes.n_dev, "test": sizes.n_test})
        write_synthetic_dataset(directory, synthetic.seed, sizes)
        stamp.write_text(description)
    return {**paths, "tokenizer": "synthetic"}


def drop_empty_splits(splits: dict, sources: dict, eval_splits: tuple) -> dict:
    """`splits` without the empty ones. An empty split that `eval.splits` asks for is an error naming
    its file (an empty dev file used to mean, silently, no dev evaluation, no best checkpoint and no
    early stopping); any other empty split is a loud warning."""
    for split, documents in splits.items():
        if documents:
            continue
        if split in eval_splits:
            raise ValueError(f"the {split} split is empty: {sources.get(split)} holds no documents, and "
                             f"eval.splits={eval_splits} needs it (fix the file, or drop {split!r} from eval.splits)")
        consequence = (": no dev evaluation, no best checkpoint, no early stopping" if split == "dev" else "")
        logger.warning("the %s split is EMPTY (%s holds no documents) and is ignored%s",
                       split, sources.get(split), consequence)
    return {k: v for k, v in splits.items() if v}


def load_data(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> DataBundle:
    """Reads (or, for the synthetic demo, generates into WORKDIR/data) every configured split."""
    data = config.data
    paths = {"train": data.train_path, "dev": data.dev_path, "test": data.test_path}
    if data.synthetic.get("enabled", False):
        paths = write_synthetic_data(pathlib.Path(workdir) / "data", data.synthetic)
    splits: dict[str, list[Document]] = {}
    sources = {split: paths.get(split) for split in SPLITS}
    if data.single_file and not data.train_path:
        sources = {split: f"{data.single_file} (its {split} share, data.split_fractions)" for split in SPLITS}
        documents = list(read_documents(data.single_file, format=data.format))
        splits = split_by_order(documents, data.split_fractions)
        logger.info(
            "split %s by document order into train/dev/test = %s documents",
            data.single_file, [len(splits[s]) for s in SPLITS],
        )
    for split in SPLITS:
        if split not in splits and paths.get(split):
            splits[split] = list(read_documents(paths[split], format=data.format))
    if "train" in splits:
        splits["train"] = _limit(splits["train"], data.max_train_docs)
    for split in ("dev", "test"):
        if split in splits:
            splits[split] = _limit(splits[split], data.max_eval_docs)
    splits = drop_empty_splits(splits, sources, tuple(config.eval.get("splits", ())))
    tokenizer = load_tokenizer(paths.get("tokenizer") or data.tokenizer)
    labels = label_set([d for docs in splits.values() for d in docs])
    if not labels:
        raise ValueError(f"no entity labels found in any split of data {data.name!r}: {sorted(splits)}")
    return DataBundle(splits=splits, tokenizer=tokenizer, labels=labels)
