"""The Flax DeBERTa encoder matches transformers' DebertaV2Model (float32, <= 1e-5), and the
Hugging Face / Orbax conversion paths load, check and reject checkpoints by key name."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.numpy import save_file  # noqa: E402

from sener_jax.convert import load_encoder, load_hf_deberta, read_hf_state_dict  # noqa: E402
from sener_jax.models.deberta import DebertaEncoder, EncoderConfig  # noqa: E402
from sener_jax.models.disentangled_attention import log_bucket  # noqa: E402

TOLERANCE = 1e-5
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# Tiny geometries that exercise every branch of the HF computation.
HF_CONFIGS = {
    # DeBERTa-v3 layout: 256 log buckets over 512 positions, shared keys, LayerNorm'd rel table.
    "v3_256_buckets": dict(
        hidden_size=64, num_attention_heads=4, intermediate_size=96, position_buckets=256,
        max_relative_positions=512, pos_att_type=["p2c", "c2p"], share_att_key=True,
        norm_rel_ebd="layer_norm", position_biased_input=False,
    ),
    # 8 buckets over 16 positions: a few hundred tokens are deep in the log buckets; width 48, 3 heads.
    "small_buckets_w48": dict(
        hidden_size=48, num_attention_heads=3, intermediate_size=80, position_buckets=8,
        max_relative_positions=16, pos_att_type="p2c|c2p", share_att_key=True,
        norm_rel_ebd="layer_norm", position_biased_input=False,
    ),
    # DeBERTa-v2 style: separate position projections, absolute positions, token types, no log
    # buckets (clipped distances), c2p only, an embedding projection, width 36.
    "v2_style_c2p": dict(
        hidden_size=36, num_attention_heads=3, intermediate_size=50, position_buckets=-1,
        max_relative_positions=24, pos_att_type=["c2p"], share_att_key=False, norm_rel_ebd="none",
        position_biased_input=True, type_vocab_size=2, max_position_embeddings=700, embedding_size=20,
    ),
}
VOCAB = 101


def _randomise(model, seed: int) -> None:
    """Every parameter random (LayerNorms and biases too), scaled so attention is not uniform."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "LayerNorm.weight" in name:
                value = 1.0 + 0.2 * torch.randn(param.shape, generator=generator)
            elif name.endswith("bias"):
                value = 0.1 * torch.randn(param.shape, generator=generator)
            elif param.ndim == 2 and "embeddings" in name:
                value = torch.randn(param.shape, generator=generator)
            else:
                value = 1.5 / param.shape[1] ** 0.5 * torch.randn(param.shape, generator=generator)
            param.copy_(value)


def _build_hf(name: str, directory: pathlib.Path):
    overrides = HF_CONFIGS[name]
    config = transformers.DebertaV2Config(
        vocab_size=VOCAB, num_hidden_layers=2, relative_attention=True, hidden_act="gelu", **overrides
    )
    model = transformers.DebertaV2Model(config).eval()
    _randomise(model, seed=sorted(HF_CONFIGS).index(name))
    model.save_pretrained(directory)
    return model


@pytest.fixture(scope="module", params=sorted(HF_CONFIGS))
def hf_model(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    model = _build_hf(request.param, directory)
    return request.param, model, directory


def _batch(lengths: list[int], n: int, seed: int):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(len(lengths), n))
    mask = (np.arange(n)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
    ids = np.where(mask == 1, ids, 0)
    return ids, mask


def _hf_hidden(model, ids, mask) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()


def _flax_hidden(config, params, ids, mask) -> np.ndarray:
    out = DebertaEncoder(config).apply({"params": params}, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))
    return np.asarray(out)


def test_log_bucket_matches_transformers():
    from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

    relative = torch.arange(-40000, 40001)
    for buckets, max_position in [(256, 512), (8, 16), (32, 64), (64, 512)]:
        expected = make_log_bucket_position(relative, buckets, max_position).long().numpy()
        np.testing.assert_array_equal(log_bucket(relative.numpy(), buckets, max_position), expected)


def test_hidden_states_match_hugging_face(hf_model):
    name, model, directory = hf_model
    config, params = load_hf_deberta(directory)
    assert config.attention == "full"
    worst = 0.0
    # Lengths 1 .. 640 with padding inside each batch (the padded rows are compared too:
    # "full" keeps Hugging Face's treatment of padding queries).
    for lengths, n, seed in [([1, 1], 1, 0), ([7, 3, 5], 7, 1), ([640, 333, 1], 640, 2)]:
        ids, mask = _batch(lengths, n, seed)
        diff = np.max(np.abs(_flax_hidden(config, params, ids, mask) - _hf_hidden(model, ids, mask)))
        worst = max(worst, float(diff))
        assert diff <= TOLERANCE, f"{name}: lengths {lengths}: max abs diff {diff:.3g}"
    print(f"\n[parity] {name}: max abs diff {worst:.3g}")


def _rewrite_weights(directory: pathlib.Path, target: pathlib.Path, edit) -> pathlib.Path:
    target.mkdir()
    (target / "config.json").write_text((directory / "config.json").read_text())
    state = read_hf_state_dict(directory)
    save_file(edit(dict(state)), str(target / "model.safetensors"))
    return target


def test_checkpoint_variants_and_key_errors(tmp_path):
    directory = tmp_path / "base"
    _build_hf("small_buckets_w48", directory)
    config, params = load_hf_deberta(directory)
    ids, mask = _batch([9, 4], 9, 3)
    expected = _flax_hidden(config, params, ids, mask)

    def prefixed(state):
        out = {f"deberta.{key}": value for key, value in state.items()}
        out["lm_predictions.lm_head.bias"] = np.zeros(VOCAB, np.float32)  # a task head: left aside
        return out

    _, params_prefixed = load_hf_deberta(_rewrite_weights(directory, tmp_path / "prefixed", prefixed))
    np.testing.assert_array_equal(_flax_hidden(config, params_prefixed, ids, mask), expected)

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
    model = _build_hf("small_buckets_w48", tmp_path)
    # transformers 5 only writes safetensors: make the legacy layout by hand.
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    config, params = load_hf_deberta(tmp_path)
    ids, mask = _batch([5, 2], 5, 4)
    assert np.max(np.abs(_flax_hidden(config, params, ids, mask) - _hf_hidden(model, ids, mask))) <= TOLERANCE


def test_orbax_export_round_trip(tmp_path):
    source = tmp_path / "hf"
    _build_hf("v2_style_c2p", source)
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
    ids, mask = _batch([6, 6], 6, 5)
    np.testing.assert_array_equal(_flax_hidden(config, params, ids, mask), _flax_hidden(config, expected_params, ids, mask))


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
