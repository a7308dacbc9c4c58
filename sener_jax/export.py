"""A self-contained model directory for inference: LoRA merged, params, config, labels, tokenizer.

Layout of `export_dir`:
    params/            Orbax checkpoint of {"encoder": ..., "head": ...} (LoRA merged: plain DeBERTa weights)
    model.json         {"format_version", "model": SenerConfig.to_dict(), "labels": [...],
                        "inference": InferenceSettings as a dict}
    tokenizer/         the tokenizer's own files (reload with sener_jax.data.load_tokenizer)
    MANIFEST.json      size + sha256 of every file above, written last (sener_jax.manifest): the
                       commit marker, checked by `load_export`; its own sha256 identifies the export

`InferenceSettings` lives here because it is part of this format (model.json stores it);
`sener_jax.predict` builds on this module, never the other way. `load_export` is the one reader
of model.json.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from sener_jax.data import length_buckets, load_tokenizer
from sener_jax.manifest import manifest_digest, read_manifest, verify_manifest, write_manifest
from sener_jax.data.bucket_plan import BucketPlan, plan_buckets
from sener_jax.models.layer_stack import stack_tree
from sener_jax.models.lora import merge_lora
from sener_jax.models.sener import SenerConfig, init_params
from sener_jax.output_dir import staged_directory
from sener_jax.train_guard import require_finite

FORMAT_VERSION = 1
MANIFEST_KIND = "export"


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
    """How documents are cut and decoded (saved with an export so that loading reproduces it)."""

    max_tokens: int = 5120
    overlap_words: int = 128
    threshold: float = 0.5
    token_bucket_base: int = 128  # padded token lengths: base * 2**k, capped at max_tokens
    word_bucket_base: int = 32
    # The authors' pipeline, selectable (README "Differences from the original implementation");
    # exports written before these fields existed load with our defaults.
    segmentation: str = "words"  # "words" (ours: word boundaries, overlap) | "subwords" (theirs)
    merge: str = "margin"  # "margin" (ours) | "union" (theirs: same-type overlaps across pieces joined)
    boundary_word_crosses: bool = True  # False: theirs, spans sharing exactly one boundary word do not cross
    batching: str = "buckets"  # "buckets" (ours) | "order" (theirs: input order; matters with LogN "padded")

    def buckets(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Fixed length buckets, so every call compiles at most one program per bucket pair."""
        top_tokens = -(-self.max_tokens // self.token_bucket_base) * self.token_bucket_base
        token_buckets = length_buckets(top_tokens, min(self.token_bucket_base, top_tokens))
        max_words = max(self.max_tokens - 2, 1)
        return token_buckets, length_buckets(max_words, min(self.word_bucket_base, max_words))

    def bucket_plan(self, segments, max_buckets: int) -> BucketPlan | None:
        """At most `max_buckets` shapes chosen from `segments`' lengths, in multiples of the bases
        (None when `max_buckets` is 0 or there are no segments: the fixed `buckets()`)."""
        if max_buckets <= 0 or not segments:
            return None
        return plan_buckets([s.n_tokens for s in segments], [s.n_words for s in segments], max_buckets,
                            token_multiple=min(self.token_bucket_base, self.max_tokens),
                            word_multiple=self.word_bucket_base)


@dataclasses.dataclass
class ExportedModel:
    model_config: SenerConfig
    params: Any
    tokenizer: Any
    labels: list[str]
    settings: InferenceSettings
    digest: str = ""  # sha256 of MANIFEST.json: which export produced a prediction file


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
    *,
    overwrite: bool = False,
) -> pathlib.Path:
    """Writes the export directory and returns its path.

    An existing export is replaced (atomically) only with `overwrite` (the training run and
    `--mode=export` pass True for their own WORKDIR/export); a non-empty directory that is not an
    export is always refused (`sener_jax.output_dir`). Params with NaN/inf are refused
    (`NonFiniteParamsError` naming the leaf) before anything is written.
    """
    export_dir = pathlib.Path(export_dir).absolute()
    labels = list(labels)
    if len(labels) != model_config.head.num_types:
        raise ValueError(f"export_model: {len(labels)} labels for a head with num_types={model_config.head.num_types}")
    config, merged = merged_model(model_config, params)
    host_params = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), merged)
    require_finite(host_params, f"to export to {export_dir}")
    with staged_directory(export_dir, kind=MANIFEST_KIND, overwrite=overwrite) as staging:
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
            "labels": labels,
            "inference": dataclasses.asdict(settings),
        }
        (staging / "model.json").write_text(json.dumps(meta, indent=2, default=list))
        write_manifest(staging, kind=MANIFEST_KIND)  # last: the commit marker
    return export_dir


def _settings_from(meta_path: pathlib.Path, values) -> InferenceSettings:
    """InferenceSettings of model.json's "inference", every field checked (name and range)."""
    if not isinstance(values, dict):
        raise ValueError(f"{meta_path}: field 'inference' must be an object, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(InferenceSettings)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{meta_path}: inference: unknown field(s) {unknown}; known: {sorted(known)}")
    rules = {
        "max_tokens": (lambda v: _is_int(v) and v >= 3, "an int >= 3"),
        "overlap_words": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
        "threshold": (lambda v: _is_number(v) and 0.0 <= v <= 1.0, "a number in [0, 1]"),
        "token_bucket_base": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
        "word_bucket_base": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
        "segmentation": (lambda v: v in ("words", "subwords"), "'words' or 'subwords'"),
        "merge": (lambda v: v in ("margin", "union"), "'margin' or 'union'"),
        "boundary_word_crosses": (lambda v: isinstance(v, bool), "a bool"),
        "batching": (lambda v: v in ("buckets", "order"), "'buckets' or 'order'"),
    }
    for name, value in values.items():
        ok, wanted = rules[name]
        if not ok(value):
            raise ValueError(f"{meta_path}: inference.{name} = {value!r}, expected {wanted}")
    settings = InferenceSettings(**values)
    if settings.overlap_words >= settings.max_tokens:
        raise ValueError(f"{meta_path}: inference.overlap_words ({settings.overlap_words}) must be < inference.max_tokens")
    return settings


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_param_shapes(params_dir: pathlib.Path, meta_path: pathlib.Path, model_config: SenerConfig, params) -> None:
    """The restored arrays have the shapes model.json's config implies (a hand-edited config, or
    params of another model, fail here naming the first differing array instead of in extract)."""
    expected = traverse_util.flatten_dict(jax.eval_shape(lambda: init_params(model_config, jax.random.PRNGKey(0))))
    found = traverse_util.flatten_dict(params)
    for path in sorted(set(expected) | set(found)):
        name = "/".join(map(str, path))
        if path not in found:
            raise ValueError(f"{params_dir}: array {name} is missing for the model in {meta_path}")
        if path not in expected:
            raise ValueError(f"{params_dir}: array {name} is not part of the model in {meta_path}")
        if tuple(np.shape(found[path])) != tuple(expected[path].shape):
            raise ValueError(
                f"{params_dir}: array {name} has shape {tuple(np.shape(found[path]))}, but {meta_path} "
                f"(model.encoder / model.head) implies {tuple(expected[path].shape)}"
            )


def load_export(export_dir: str | os.PathLike) -> ExportedModel:
    """Reads an export back, refusing an incomplete or corrupted one (MANIFEST.json checksums)
    and an inconsistent model.json (every field checked), with errors naming the file and field."""
    export_dir = pathlib.Path(export_dir).resolve()
    meta_path = export_dir / "model.json"
    if not export_dir.is_dir():
        raise FileNotFoundError(f"{export_dir}: no such export directory")
    verify_manifest(export_dir)
    if not meta_path.is_file():
        raise FileNotFoundError(f"{export_dir} is not a sener_jax export: {meta_path.name} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{meta_path}: not valid JSON ({error})") from error
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path}: expected a JSON object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{meta_path}: format_version {meta.get('format_version')!r}, this sener_jax reads {FORMAT_VERSION}"
        )
    for field in ("model", "labels", "inference"):
        if field not in meta:
            raise ValueError(f"{meta_path}: field {field!r} is missing")
    try:
        model_config = SenerConfig.from_dict(meta["model"])
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise ValueError(f"{meta_path}: field 'model': {type(error).__name__}: {error}") from error
    labels = meta["labels"]
    if not isinstance(labels, list) or not all(isinstance(label, str) and label for label in labels):
        raise ValueError(f"{meta_path}: field 'labels' must be a list of non-empty strings")
    if len(set(labels)) != len(labels):
        raise ValueError(f"{meta_path}: field 'labels' names a label twice")
    if len(labels) != model_config.head.num_types:
        raise ValueError(
            f"{meta_path}: field 'labels' has {len(labels)} labels but model.head.num_types is "
            f"{model_config.head.num_types} (one label per entity type of the head)"
        )
    settings = _settings_from(meta_path, meta["inference"])
    try:
        params = ocp.StandardCheckpointer().restore(export_dir / "params")
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"{export_dir / 'params'}: cannot restore the parameters ({type(error).__name__}: {error})") from error
    if model_config.encoder.scan_layers:  # an export written before the layers were scanned: layer_<n> trees
        params = stack_tree(params)
    _check_param_shapes(export_dir / "params", meta_path, model_config, params)
    return ExportedModel(
        model_config=model_config,
        params=params,
        tokenizer=load_tokenizer(str(export_dir / "tokenizer")),
        labels=list(labels),
        settings=settings,
        digest=manifest_digest(export_dir),
    )


def load_export_labels(export_dir: str | os.PathLike) -> list[str]:
    """The labels of an export (its model.json), without loading the model."""
    meta_path = pathlib.Path(export_dir) / "model.json"
    return list(json.loads(meta_path.read_text()).get("labels", []))


def export_digest(export_dir: str | os.PathLike) -> str:
    """The export's identity (sha256 of its MANIFEST.json, hence of every file's sha256)."""
    export_dir = pathlib.Path(export_dir).resolve()
    if not export_dir.is_dir():
        raise FileNotFoundError(f"{export_dir}: no such export directory")
    if read_manifest(export_dir) is None:
        verify_manifest(export_dir)  # raises, saying what is wrong (no export, incomplete export)
    return manifest_digest(export_dir)
