"""Hugging Face -> Flax conversion: prefixes, legacy .bin files, key/shape errors by name, the
Orbax export command and its loader, and config fields that are refused by name."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("torch")
from safetensors.numpy import save_file  # noqa: E402

from sener_jax.convert import load_encoder, load_hf_deberta, read_hf_state_dict, save_encoder  # noqa: E402
from sener_jax.manifest import verify_manifest  # noqa: E402
from sener_jax.models.deberta import EncoderConfig  # noqa: E402
from tests.deberta_helpers import VOCAB, build_hf_deberta, flax_hidden, hf_hidden, token_batch  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _rewrite_weights(directory: pathlib.Path, target: pathlib.Path, edit) -> pathlib.Path:
    target.mkdir()
    (target / "config.json").write_text((directory / "config.json").read_text())
    save_file(edit(dict(read_hf_state_dict(directory))), str(target / "model.safetensors"))
    return target


def test_prefixed_keys_and_key_errors_by_name(tmp_path):
    directory = tmp_path / "base"
    build_hf_deberta("small_buckets_w48", directory)
    config, params = load_hf_deberta(directory)
    ids, mask = token_batch([9, 4], 9, 3)
    expected = flax_hidden(config, params, ids, mask)

    def prefixed(state):
        out = {f"deberta.{key}": value for key, value in state.items()}
        out["lm_predictions.lm_head.bias"] = np.zeros(VOCAB, np.float32)  # a task head: left aside
        return out

    _, params_prefixed = load_hf_deberta(_rewrite_weights(directory, tmp_path / "prefixed", prefixed))
    np.testing.assert_array_equal(flax_hidden(config, params_prefixed, ids, mask), expected)

    missing_key = "encoder.layer.1.output.dense.bias"
    broken = _rewrite_weights(directory, tmp_path / "missing", lambda s: {k: v for k, v in s.items() if k != missing_key})
    with pytest.raises(ValueError, match=f"missing key '{missing_key}'"):
        load_hf_deberta(broken)

    extra_key = "encoder.layer.0.attention.self.pos_proj.weight"
    broken = _rewrite_weights(directory, tmp_path / "extra", lambda s: {**s, extra_key: np.zeros((2, 2), np.float32)})
    with pytest.raises(ValueError, match=f"unexpected key '{extra_key}'"):
        load_hf_deberta(broken)

    shape_key = "encoder.layer.0.attention.self.query_proj.weight"
    broken = _rewrite_weights(directory, tmp_path / "shape", lambda s: {**s, shape_key: s[shape_key][:, :-1].copy()})
    with pytest.raises(ValueError, match=f"key '{shape_key}' has shape \\(48, 47\\), expected \\(48, 48\\)"):
        load_hf_deberta(broken)


def test_pytorch_bin_checkpoint(tmp_path):
    import torch

    model = build_hf_deberta("small_buckets_w48", tmp_path)
    # transformers 5 only writes safetensors: make the legacy layout by hand.
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    config, params = load_hf_deberta(tmp_path)
    ids, mask = token_batch([5, 2], 5, 4)
    assert np.max(np.abs(flax_hidden(config, params, ids, mask) - hf_hidden(model, ids, mask))) <= 1e-5


def test_orbax_export_round_trip(tmp_path):
    source = tmp_path / "hf"
    build_hf_deberta("v2_style_c2p", source)
    out = tmp_path / "export"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-m", "sener_jax.convert", str(source), str(out)],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "encoder_config.json").read_text())["hidden_size"] == 36
    config, params = load_encoder(out)
    expected_config, expected_params = load_hf_deberta(source)
    assert config == expected_config
    jax.tree.map(np.testing.assert_array_equal, params, expected_params)
    ids, mask = token_batch([6, 6], 6, 5)
    np.testing.assert_array_equal(flax_hidden(config, params, ids, mask), flax_hidden(config, expected_params, ids, mask))
    with pytest.raises(FileExistsError, match="already exists"):
        save_encoder(out, config, params)
    verify_manifest(out, kind="encoder")


def test_conversion_never_deletes_a_foreign_directory_and_replaces_ours_only_with_overwrite(tmp_path):
    from sener_jax.convert import main

    source = tmp_path / "hf"
    build_hf_deberta("v2_style_c2p", source)
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    (tmp_path / "out.tmp").mkdir()
    (tmp_path / "out.tmp" / "keep").write_text("precious")
    for flags in ([], ["--overwrite"]):
        with pytest.raises(FileExistsError, match="not a sener_jax encoder"):
            main([str(source), str(out), *flags])
    assert (out / "thesis.tex").read_text() == "precious"
    (out / "thesis.tex").unlink()
    assert main([str(source), str(out)]) == 0
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        main([str(source), str(out)])
    (out / "stale").write_text("old")
    assert main([str(source), str(out), "--overwrite"]) == 0
    assert not (out / "stale").exists() and load_encoder(out)[0] == load_hf_deberta(source)[0]
    assert (tmp_path / "out.tmp" / "keep").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "out", "out.tmp"]


def test_missing_weights_and_bad_paths_are_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 48, "num_attention_heads": 3}))
    with pytest.raises(FileNotFoundError, match="no weights found"):
        load_hf_deberta(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        load_hf_deberta(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="missing"):
        load_encoder(tmp_path)


@pytest.mark.parametrize(
    "field, value",
    [("conv_kernel_size", 3), ("attention_head_size", 7), ("hidden_act", "mish"), ("pos_att_type", ["c2p", "x2y"]),
     ("norm_rel_ebd", "batch_norm")],
)
def test_unsupported_hf_fields_are_named(field, value):
    hf = dict(hidden_size=48, num_attention_heads=3, relative_attention=True, **{field: value})
    with pytest.raises(ValueError, match=field):
        EncoderConfig.from_hf_config(hf)


def test_config_round_trip_and_validation():
    config = EncoderConfig(hidden_size=48, num_attention_heads=3, attention="arrow", window=4, lora_rank=2)
    assert EncoderConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="attention_impl"):
        EncoderConfig(attention_impl="cuda")
    with pytest.raises(ValueError, match="hidden_size"):
        EncoderConfig(hidden_size=50, num_attention_heads=3)
    with pytest.raises(ValueError, match="unknown EncoderConfig field"):
        EncoderConfig.from_dict({"hidden_sise": 3})
    # Keys missing from a config.json take transformers' defaults, not ours.
    defaults = EncoderConfig.from_hf_config({"hidden_size": 48, "num_attention_heads": 3})
    assert defaults.share_att_key is False and defaults.position_biased_input is True
    assert defaults.relative_attention is False and defaults.pos_att_type == ()


def test_deberta_v3_large_config_gives_the_default_geometry():
    # microsoft/deberta-v3-large's config.json (as published), extra keys included.
    v3_large = {
        "model_type": "deberta-v2", "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 4096,
        "max_position_embeddings": 512, "relative_attention": True, "position_buckets": 256,
        "norm_rel_ebd": "layer_norm", "share_att_key": True, "pos_att_type": "p2c|c2p", "layer_norm_eps": 1e-7,
        "max_relative_positions": -1, "position_biased_input": False, "num_attention_heads": 16,
        "num_hidden_layers": 24, "type_vocab_size": 0, "vocab_size": 128100,
    }
    config = EncoderConfig.from_hf_config(v3_large, attention="arrow")
    assert config == EncoderConfig(attention="arrow")
    assert (config.relative_span, config.resolved_max_relative_positions, config.scale_factor) == (256, 512, 3)
