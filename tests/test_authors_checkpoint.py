"""Authors' checkpoint loader: a state dict written in exactly the authors' PyTorch layout from
random params of our own loads back to the same model (logits within 1e-5 of our model with the
LoRA merged by hand), bad checkpoints fail naming the key, and the CLI export extracts."""
from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch  # test-only dependency (requirements-test.txt): a missing torch fails here, never skips

from sener_jax.data import load_tokenizer
from sener_jax.models.deberta import EncoderConfig
from sener_jax.models.layer_stack import stack_tree, unstack_tree
from sener_jax.models.sener import SenerConfig, band_logits, init_params
from sener_jax.models.span_head import SpanHeadConfig

RANK, ALPHA = 8, 16.0
HF_GEOMETRY = dict(  # a tiny DeBERTa-v3 shape, as a Hugging Face config.json would give it
    vocab_size=load_tokenizer("synthetic").vocab_size, hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=64,
    relative_attention=True, position_buckets=8, max_relative_positions=16, pos_att_type=["p2c", "c2p"],
    share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False, max_position_embeddings=512,
    type_vocab_size=0,
)
ENCODER = EncoderConfig.from_hf_config(HF_GEOMETRY)
# What the loader must return for it: the authors' attention settings.
AUTHORS_ENCODER = dataclasses.replace(ENCODER, attention="arrow", window=128, logn=True, logn_length="padded")
HEAD = SpanHeadConfig(num_types=4, max_span_words=5, biaffine_dim=12, channels=8, num_blocks=2)
LOGITS = jax.jit(band_logits, static_argnums=0)


def _random_params(config: SenerConfig, seed: int) -> dict:
    """Every leaf random and non-zero (LoRA B included), scaled so nothing saturates.

    Shapes come from an abstract init and values from numpy: nothing is compiled.
    """
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
    rng = np.random.default_rng(seed)

    def fill(leaf):
        scale = 1.0 / np.sqrt(leaf.shape[-2]) if len(leaf.shape) >= 2 else 0.1
        return (rng.standard_normal(leaf.shape) * scale).astype(np.float32)

    return jax.tree.map(fill, shapes)


def _sinusoid(positions: int, dim: int) -> np.ndarray:
    """The authors' RoFormerSinusoidalPositionalEmbedding table, written out independently."""
    enc = np.array([[pos / np.power(10000, 2 * (j // 2) / dim) for j in range(dim)] for pos in range(positions)])
    return np.concatenate([np.sin(enc[:, 0::2]), np.cos(enc[:, 1::2])], axis=1).astype(np.float32)


def _linear(state, name, dense):
    state[name + ".weight"] = np.asarray(dense["kernel"]).T
    state[name + ".bias"] = np.asarray(dense["bias"])


def _layer_norm(state, name, ln):
    state[name + ".weight"] = np.asarray(ln["scale"])
    state[name + ".bias"] = np.asarray(ln["bias"])


def authors_state_dict(params: dict, prefix: str) -> dict[str, np.ndarray]:
    """Our params (LoRA kept) in the authors' state-dict layout (the issue's list of keys)."""
    enc, head, state = unstack_tree(params["encoder"]), params["head"], {}
    pm = "pretrain_model."
    state[pm + "embeddings.word_embeddings.weight"] = np.asarray(enc["embeddings"]["word_embeddings"]["embedding"])
    _layer_norm(state, pm + "embeddings.LayerNorm", enc["embeddings"]["LayerNorm"])
    state[pm + "encoder.rel_embeddings.weight"] = np.asarray(enc["encoder"]["rel_embeddings"]["embedding"])
    _layer_norm(state, pm + "encoder.LayerNorm", enc["encoder"]["LayerNorm"])
    for n in range(ENCODER.num_hidden_layers):
        layer, base = enc["encoder"][f"layer_{n}"], f"{pm}encoder.layer.{n}."
        attn = layer["attention"]["self"]
        for proj in ("query_proj", "value_proj"):
            _linear(state, f"{base}attention.self.{proj}.base_layer", attn[proj])
            state[f"{base}attention.self.{proj}.lora_A.default.weight"] = np.asarray(attn[proj]["lora_a"]).T  # (r, in)
            state[f"{base}attention.self.{proj}.lora_B.default.weight"] = np.asarray(attn[proj]["lora_b"]).T  # (out, r)
        _linear(state, f"{base}attention.self.key_proj", attn["key_proj"])
        _linear(state, f"{base}attention.output.dense", layer["attention"]["output"]["dense"])
        _layer_norm(state, f"{base}attention.output.LayerNorm", layer["attention"]["output"]["LayerNorm"])
        _linear(state, f"{base}intermediate.dense", layer["intermediate"]["dense"])
        _linear(state, f"{base}output.dense", layer["output"]["dense"])
        _layer_norm(state, f"{base}output.LayerNorm", layer["output"]["LayerNorm"])
    _linear(state, "head_mlp.1", head["head_mlp"])
    _linear(state, "tail_mlp.1", head["tail_mlp"])
    state["U"], state["W"] = np.asarray(head["U"]), np.asarray(head["W"])
    for n in range(HEAD.num_blocks):
        block, base = head[f"cross_layers_{n}"], f"cross_layers.{n}."
        state[base + "pos_embed.weight"] = np.asarray(block["pos_embed"]["embedding"])
        _linear(state, base + "h_qkv", block["h_qkv"])
        _linear(state, base + "v_qkv", block["v_qkv"])
        state[base + "embed_positions.weight"] = _sinusoid(512, HEAD.channels)
        _linear(state, base + "dense", block["dense"])
        _layer_norm(state, base + "LayerNorm", block["LayerNorm"])
        for conv in ("conv1", "conv2"):  # HWIO (3, 3, in, out) -> torch (out, in, 3, 3)
            state[f"{base}{conv}.conv2d.weight"] = np.transpose(np.asarray(block[conv]["kernel"]), (3, 2, 0, 1))
        _layer_norm(state, base + "LayerNorm2", block["LayerNorm2"])
    _linear(state, "down_fc", head["down_fc"])
    return {prefix + key: np.ascontiguousarray(value) for key, value in state.items()}


def save_pth(state: dict[str, np.ndarray], path) -> None:
    torch.save({key: torch.from_numpy(value.copy()) for key, value in state.items()}, path)


@pytest.fixture(scope="module")
def ours():
    """Random params with LoRA, their hand-merged twin, and a batch with padding."""
    config = SenerConfig(dataclasses.replace(AUTHORS_ENCODER, lora_rank=RANK, lora_alpha=ALPHA), HEAD)
    params = _random_params(config, seed=1)
    state = authors_state_dict(params, prefix="")
    # Merge by hand in the authors' (out, in) layout: W = base + (B @ A) * alpha / r, alpha / r = 2.
    merged = jax.tree.map(np.array, params)
    merged["encoder"] = unstack_tree(merged["encoder"])
    for n in range(ENCODER.num_hidden_layers):
        for proj in ("query_proj", "value_proj"):
            name = f"pretrain_model.encoder.layer.{n}.attention.self.{proj}"
            weight = state[name + ".base_layer.weight"].astype(np.float64) + 2.0 * (
                state[name + ".lora_B.default.weight"].astype(np.float64) @ state[name + ".lora_A.default.weight"]
            )
            dense = merged["encoder"]["encoder"][f"layer_{n}"]["attention"]["self"][proj]
            dense["kernel"] = weight.T.astype(np.float32)
            del dense["lora_a"], dense["lora_b"]
    merged["encoder"] = stack_tree(merged["encoder"])
    rng = np.random.default_rng(0)
    batch, n_tokens, n_words = 2, 24, 11
    word_index = np.full((batch, n_tokens), -1, np.int32)
    attention = np.zeros((batch, n_tokens), np.int32)
    word_mask = np.zeros((batch, n_words), bool)
    for b, words in enumerate((n_words, 7)):  # the second row is padded
        pieces = np.repeat(np.arange(words), rng.integers(1, 3, words))[: n_tokens - 2]
        word_index[b, 1 : 1 + len(pieces)] = pieces
        attention[b, : len(pieces) + 2] = 1
        word_mask[b, : pieces.max() + 1] = True
    input_ids = rng.integers(5, ENCODER.vocab_size, (batch, n_tokens)).astype(np.int32) * attention
    inputs = tuple(jnp.asarray(x) for x in (input_ids, attention, word_index, word_mask))
    merged_config = SenerConfig(AUTHORS_ENCODER, HEAD)
    return dict(config=config, params=params, state=state, merged_config=merged_config, merged=merged,
                inputs=inputs, expected=np.asarray(LOGITS(merged_config, merged, *inputs)))


def _load(checkpoint, **kwargs):
    from sener_jax.authors_checkpoint import load_authors_checkpoint

    return load_authors_checkpoint(checkpoint, ENCODER, HEAD.num_types, head_window=HEAD.band_half_width, **kwargs)


def _assert_same_tree(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_pth_loads_to_the_same_logits_as_our_model_with_lora_merged_by_hand(ours, tmp_path):
    path = tmp_path / "sener.pth"
    save_pth(authors_state_dict(ours["params"], "module.base_model.model."), path)
    config, params = _load(path)
    assert config == ours["merged_config"]  # arrow, window 128, LogN padded, c/p/R/blocks from keys, LoRA merged
    assert config.head.bispa_alignment == "original" and config.head.use_bispa and config.encoder.lora_rank == 0
    logits = np.asarray(LOGITS(config, params, *ours["inputs"]))
    valid = ours["expected"] > -1e3
    assert valid.sum() > 100
    np.testing.assert_allclose(logits[valid], ours["expected"][valid], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(logits[~valid], ours["expected"][~valid])
    # Merging preserves the function: the unmerged model with LoRA gives the same logits.
    unmerged = np.asarray(LOGITS(ours["config"], ours["params"], *ours["inputs"]))
    np.testing.assert_allclose(unmerged[valid], ours["expected"][valid], atol=1e-5, rtol=0)

    # The other wrappings (peft only, none), safetensors and LoRA kept all give the same params.
    for prefix in ("base_model.model.", ""):
        save_pth(authors_state_dict(ours["params"], prefix), tmp_path / "other.pth")
        _assert_same_tree(_load(tmp_path / "other.pth")[1], params)
    from safetensors.numpy import save_file

    save_file(authors_state_dict(ours["params"], "module.base_model.model."), str(tmp_path / "sener.safetensors"))
    _assert_same_tree(_load(tmp_path / "sener.safetensors")[1], params)
    kept_config, kept = _load(ours["state"], merge=False)
    assert kept_config == ours["config"]
    _assert_same_tree(kept, ours["params"])


def test_converted_layouts_compute_what_the_pytorch_modules_compute(ours):
    """Linear (out, in), peft's LoRA forward and Conv2d (out, in, kh, kw) over (row, band index),
    run by torch on the stored tensors, equal our ops on the converted params."""
    import torch.nn.functional as F

    state = ours["state"]
    _, params = _load(state)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 9, HEAD.channels)).astype(np.float32)  # (B, rows, band, c)
    tx = torch.from_numpy(x)
    block = params["head"]["cross_layers_0"]
    for conv in ("conv1", "conv2"):
        expected = F.conv2d(tx.permute(0, 3, 1, 2), torch.from_numpy(state[f"cross_layers.0.{conv}.conv2d.weight"]), padding=1)
        ours_conv = jax.lax.conv_general_dilated(x, block[conv]["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        np.testing.assert_allclose(ours_conv, expected.permute(0, 2, 3, 1).numpy(), atol=1e-5)
    expected = F.linear(tx, torch.from_numpy(state["cross_layers.0.h_qkv.weight"]), torch.from_numpy(state["cross_layers.0.h_qkv.bias"]))
    np.testing.assert_allclose(x @ block["h_qkv"]["kernel"] + block["h_qkv"]["bias"], expected.numpy(), atol=1e-5)
    # peft: base_layer(x) + lora_B(lora_A(x)) * alpha / r
    name = "pretrain_model.encoder.layer.0.attention.self.query_proj."
    h = torch.from_numpy(rng.standard_normal((3, ENCODER.hidden_size)).astype(np.float32))
    t = {k: torch.from_numpy(state[name + k]) for k in ("base_layer.weight", "base_layer.bias", "lora_A.default.weight", "lora_B.default.weight")}
    expected = F.linear(h, t["base_layer.weight"], t["base_layer.bias"]) + F.linear(
        F.linear(h, t["lora_A.default.weight"]), t["lora_B.default.weight"]) * (ALPHA / RANK)
    query = unstack_tree(params["encoder"])["encoder"]["layer_0"]["attention"]["self"]["query_proj"]
    np.testing.assert_allclose(h.numpy() @ query["kernel"] + query["bias"], expected.numpy(), atol=1e-4)


def test_missing_extra_and_misshaped_keys_fail_naming_the_key(ours):
    state = ours["state"]
    missing = "pretrain_model.encoder.layer.1.attention.self.value_proj.lora_B.default.weight"
    with pytest.raises(ValueError, match=f"missing key '{missing}'"):
        _load({k: v for k, v in state.items() if k != missing})
    with pytest.raises(ValueError, match="unexpected key 'cross_layers.0.extra.weight'"):
        _load({**state, "cross_layers.0.extra.weight": np.zeros(3, np.float32)})
    bad = "cross_layers.1.conv2.conv2d.weight"
    with pytest.raises(ValueError, match=f"key '{bad}' has shape"):
        _load({**state, bad: np.zeros((8, 8, 3, 2), np.float32)})
    # A multiple a * table (0 < a <= 1) is accepted (weight decay); a different table is not.
    with pytest.raises(ValueError, match="'cross_layers.0.embed_positions.weight' is not a \\* the RoFormer sinusoid"):
        _load({**state, "cross_layers.0.embed_positions.weight": _sinusoid(512, 8)[:, ::-1].copy()})
    with pytest.raises(ValueError, match="down_fc.weight has 4 rows"):
        from sener_jax.authors_checkpoint import load_authors_checkpoint

        load_authors_checkpoint(state, ENCODER, "scholar-xl", head_window=HEAD.band_half_width)
    # transformers' position_ids buffer (persistent in older versions) is consumed silently.
    position_ids = {"module.base_model.model.pretrain_model.embeddings.position_ids": np.arange(512)[None]}
    _assert_same_tree(_load({**state, **position_ids})[1], _load(state)[1])
    with pytest.raises(ValueError, match="collide"):
        _load({**state, "module.U": state["U"]})


def test_labels_by_dataset_name_follow_the_authors_order():
    from sener_jax.authors_checkpoint import resolve_labels

    assert resolve_labels("SciREX", 4) == ["Method", "Task", "Material", "Metric"]
    assert resolve_labels("scholar-xl", 12)[:3] == ["gender", "education", "research_interests"]
    assert resolve_labels("profiling-07", 13)[-1] == "education"
    assert resolve_labels(3, 3) == ["type_0", "type_1", "type_2"]
    with pytest.raises(ValueError, match="unknown dataset"):
        resolve_labels("conll", 4)


def test_cli_export_loads_with_extractor_and_extracts(ours, tmp_path):
    from sener_jax.authors_checkpoint import main
    from sener_jax.predict import Extractor

    encoder_dir = tmp_path / "encoder"
    encoder_dir.mkdir()
    (encoder_dir / "config.json").write_text(json.dumps(HF_GEOMETRY))
    load_tokenizer("synthetic").save(encoder_dir)  # the tokenizer lives beside config.json
    checkpoint = tmp_path / "scirex.pth"
    save_pth(authors_state_dict(ours["params"], "module.base_model.model."), checkpoint)
    with pytest.raises(ValueError, match="12 given"):  # scholar-xl names 12 types, the checkpoint has 4
        main(["--authors", str(checkpoint), "--encoder", str(encoder_dir), "--labels", "scholar-xl", str(tmp_path / "x")])
    out = tmp_path / "export"
    flags = ["--authors", str(checkpoint), "--encoder", str(encoder_dir), "--labels", "scirex"]
    out.mkdir()
    (out / "thesis.tex").write_text("precious")  # a mistyped OUT_DIR: refused, never deleted
    (tmp_path / "export.tmp").mkdir()
    (tmp_path / "export.tmp" / "keep").write_text("precious")
    with pytest.raises(FileExistsError, match="not a sener_jax export"):
        main([*flags, "--overwrite", str(out)])
    assert (out / "thesis.tex").read_text() == "precious"
    (out / "thesis.tex").unlink()
    assert main([*flags, str(out)]) == 0
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        main([*flags, str(out)])
    assert main([*flags, "--overwrite", str(out)]) == 0
    assert (tmp_path / "export.tmp" / "keep").read_text() == "precious"
    extractor = Extractor.load(out)
    assert extractor.labels == ["Method", "Task", "Material", "Metric"]
    assert extractor.model_config.encoder.logn_length == "padded" and extractor.model_config.head.max_span_words == 129
    text = "We evaluate the model on a dataset with accuracy ."
    entities = extractor.extract(text)
    assert isinstance(entities, list)
    for entity in entities:
        assert text[entity["start"] : entity["end"]] == entity["text"] and entity["label"] in extractor.labels


def test_module_entry_point_and_the_old_convert_spelling(capsys):
    """`python -m sener_jax.authors_checkpoint` runs `main`; `convert --authors` points there."""
    import os
    import pathlib
    import subprocess
    import sys

    from sener_jax.convert import main as convert_main

    repo = pathlib.Path(__file__).resolve().parents[1]  # this checkout's sener_jax, not an installed one
    env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    assert convert_main(["--authors", "x.pth", "--encoder", "e", "--labels", "scirex", "out"]) == 2
    assert "python -m sener_jax.authors_checkpoint --authors" in capsys.readouterr().err
    result = subprocess.run([sys.executable, "-m", "sener_jax.authors_checkpoint", "--help"],
                            capture_output=True, text=True, timeout=300, env=env, cwd=repo)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m sener_jax.authors_checkpoint") and "--encoder" in result.stdout
