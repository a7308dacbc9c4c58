"""A self-contained model directory for inference: LoRA merged, params, config, labels, tokenizer.

Layout of `export_dir`:
    params/            Orbax checkpoint of {"encoder": ..., "head": ...} (LoRA merged: plain DeBERTa weights)
    model.json         {"format_version", "model": SenerConfig.to_dict(), "labels": [...],
                        "inference": InferenceSettings as a dict}
    tokenizer/         the tokenizer's own files (reload with sener_jax.data.load_tokenizer)

`InferenceSettings` lives here because it is part of this format (model.json stores it);
`sener_jax.predict` builds on this module, never the other way. `load_export` is the one reader
of model.json.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
from typing import Any, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from sener_jax.data import length_buckets, load_tokenizer
from sener_jax.models.lora import merge_lora
from sener_jax.models.sener import SenerConfig

FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
    """How documents are cut and decoded (saved with an export so that loading reproduces it)."""

    max_tokens: int = 5120
    overlap_words: int = 128
    threshold: float = 0.5
    token_bucket_base: int = 128  # padded token lengths: base * 2**k, capped at max_tokens
    word_bucket_base: int = 32

    def buckets(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Fixed length buckets, so every call compiles at most one program per bucket pair."""
        top_tokens = -(-self.max_tokens // self.token_bucket_base) * self.token_bucket_base
        token_buckets = length_buckets(top_tokens, min(self.token_bucket_base, top_tokens))
        max_words = max(self.max_tokens - 2, 1)
        return token_buckets, length_buckets(max_words, min(self.word_bucket_base, max_words))


@dataclasses.dataclass
class ExportedModel:
    model_config: SenerConfig
    params: Any
    tokenizer: Any
    labels: list[str]
    settings: InferenceSettings


def merged_model(model_config: SenerConfig, params: dict) -> tuple[SenerConfig, dict]:
    """Folds LoRA into the encoder weights (no-op without LoRA)."""
    if model_config.encoder.lora_rank <= 0:
        return model_config, params
    encoder, encoder_config = merge_lora(params["encoder"], model_config.encoder)
    return dataclasses.replace(model_config, encoder=encoder_config), {"encoder": encoder, "head": params["head"]}


def export_model(
    export_dir: str | os.PathLike,
    model_config: SenerConfig,
    params: dict,
    tokenizer,
    labels: Sequence[str],
    settings: InferenceSettings,
) -> pathlib.Path:
    """Writes the export directory (replacing an existing one) and returns its path."""
    export_dir = pathlib.Path(export_dir).resolve()
    staging = export_dir.with_name(export_dir.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    config, merged = merged_model(model_config, params)
    host_params = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), merged)
    # Only the calling process writes the export (process 0 of a multi-host run): without this,
    # Orbax would wait at a barrier for the other processes, which never call it.
    this_process = ocp.options.MultiprocessingOptions(
        primary_host=jax.process_index(), active_processes={jax.process_index()}
    )
    checkpointer = ocp.StandardCheckpointer(multiprocessing_options=this_process)
    checkpointer.save(staging / "params", host_params)
    checkpointer.wait_until_finished()
    tokenizer.save(staging / "tokenizer")
    meta = {
        "format_version": FORMAT_VERSION,
        "model": config.to_dict(),
        "labels": list(labels),
        "inference": dataclasses.asdict(settings),
    }
    (staging / "model.json").write_text(json.dumps(meta, indent=2, default=list))
    # Swap in the complete directory only at the end: a killed export never leaves half a model.
    shutil.rmtree(export_dir, ignore_errors=True)
    staging.rename(export_dir)
    return export_dir


def load_export(export_dir: str | os.PathLike) -> ExportedModel:
    export_dir = pathlib.Path(export_dir).resolve()
    meta_path = export_dir / "model.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{export_dir} is not a sener_jax export: {meta_path.name} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{meta_path}: not valid JSON ({error})") from error
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{meta_path}: format_version {meta.get('format_version')!r}, this sener_jax reads {FORMAT_VERSION}"
        )
    for field in ("model", "labels", "inference"):
        if field not in meta:
            raise ValueError(f"{meta_path}: field {field!r} is missing")
    model_config = SenerConfig.from_dict(meta["model"])
    try:
        params = ocp.StandardCheckpointer().restore(export_dir / "params")
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"{export_dir / 'params'}: cannot restore the parameters ({type(error).__name__}: {error})") from error
    return ExportedModel(
        model_config=model_config,
        params=params,
        tokenizer=load_tokenizer(str(export_dir / "tokenizer")),
        labels=list(meta["labels"]),
        settings=InferenceSettings(**meta["inference"]),
    )
