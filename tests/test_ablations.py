"""Ablation variants as config overrides, the memory sweep's bookkeeping, tables, and one compiled peak."""
import jax
import numpy as np
import pytest
from flax import traverse_util

from configs import demo, scirex
from sener_jax import ablations, optim, train_step
from sener_jax.models.sener import init_params


def flat(config):
    return traverse_util.flatten_dict(config.to_dict(), sep=".")


def test_each_variant_is_sener_plus_exactly_its_overrides():
    base = scirex.get_config()
    sener = flat(ablations.sener_base(base))
    assert sener == flat(base)  # the paper config already is SeNER: pinning changes nothing
    for name, overrides in ablations.VARIANTS.items():
        variant = flat(ablations.variant_config(base, name))
        changed = {k for k in sener if variant[k] != sener[k]}
        assert changed == {k for k, v in overrides.items() if sener[k] != v}, name
        assert changed or name == "SeNER", f"{name} changes nothing"
    assert flat(base) == sener  # the base was not modified


def test_sener_base_pins_lora_and_masking_on_a_base_without_them():
    base = demo.get_config("tiny")
    assert base.train.finetune == "full" and base.model.encoder.lora_rank == 0
    sener = ablations.sener_base(base)
    assert sener.train.finetune == "lora" and sener.model.encoder.lora_rank == ablations.DEFAULT_LORA_RANK
    assert sener.model.encoder.attention == "arrow" and sener.model.head.use_bispa
    no_lora = ablations.variant_config(base, "w/o LoRA (full fine-tuning)")
    assert no_lora.train.finetune == "full" and no_lora.model.encoder.lora_rank == 0
    base.data.mask_probability = 0.0
    assert ablations.sener_base(base).data.mask_probability == ablations.DEFAULT_MASK_PROBABILITY


def test_every_variant_but_masking_changes_the_model_or_the_trained_leaves():
    # The demo has no LoRA and no BiSPA block: pinning SeNER must add them, or "w/o LoRA",
    # "w/o BiSPA" and the alignment variant would train the very same model as SeNER.
    base = demo.get_config("tiny")
    assert base.model.head.num_blocks == 0 or base.model.encoder.lora_rank == 0

    def fingerprint(config):
        model_config = train_step.model_config_from(config, 300, 3)
        shapes = jax.eval_shape(lambda: init_params(model_config, jax.random.PRNGKey(0)))
        trainable, _ = optim.split_trainable(shapes, config.train.finetune)
        return model_config, sorted(traverse_util.flatten_dict(trainable))

    sener_model, sener_trained = fingerprint(ablations.variant_config(base, "SeNER"))
    assert any(k[1].startswith("cross_layers_") for k in sener_trained if k[0] == "head")
    for name in ablations.VARIANTS:
        if name in ("SeNER", "w/o whole-word masking"):
            continue
        model, trained = fingerprint(ablations.variant_config(base, name))
        assert model != sener_model or trained != sener_trained, name
    _, no_bispa = fingerprint(ablations.variant_config(base, "w/o BiSPA"))
    assert not any(k[1].startswith("cross_layers_") for k in no_bispa if k[0] == "head")


def test_bad_overrides_variants_and_config_paths_are_named():
    base = demo.get_config("tiny")
    with pytest.raises(KeyError, match="model.encoder.atention"):
        ablations.apply_overrides(base, {"model.encoder.atention": "full"})
    with pytest.raises(KeyError, match="no field 'modle'"):
        ablations.apply_overrides(base, {"modle.encoder.attention": "full"})
    with pytest.raises(KeyError, match="unknown ablation variant 'nope'"):
        ablations.variant_config(base, "nope")
    with pytest.raises(FileNotFoundError, match="missing.py"):
        ablations.load_config("configs/missing.py:tiny")
    loaded = ablations.load_config("configs/demo.py:tiny")
    assert flat(loaded) == flat(demo.get_config("tiny"))


def test_memory_sweep_skips_after_the_budget_and_shares_identical_programs(monkeypatch):
    calls = []

    def fake_peak(config, n_tokens, **kwargs):
        calls.append((config.model.encoder.attention, n_tokens))
        return 4 * n_tokens * n_tokens if config.model.encoder.attention == "full" else 1000 * n_tokens

    monkeypatch.setattr(ablations, "train_step_peak_bytes", fake_peak)
    variants = ["SeNER", "w/o whole-word masking", "w/o arrow (full attention)"]
    rows = ablations.memory_sweep(demo.get_config("tiny"), [512, 128, 256], budget_bytes=300_000,
                                  variants=variants, vocab_size=100)
    table = {(r.variant, r.n_tokens): (r.peak_bytes, r.over_budget) for r in rows}
    assert table[("SeNER", 128)] == (128_000, False) and table[("SeNER", 512)] == (512_000, True)
    assert table[("w/o whole-word masking", 256)] == table[("SeNER", 256)]
    assert table[("w/o arrow (full attention)", 256)] == (262_144, False)
    assert table[("w/o arrow (full attention)", 512)] == (4 * 512 * 512, True)
    # Masking is host-side: the same compiled step, measured once per length.
    assert sorted(calls) == sorted([("arrow", n) for n in (128, 256, 512)] + [("full", n) for n in (128, 256, 512)])
    tight = ablations.memory_sweep(demo.get_config("tiny"), [128, 256, 512], budget_bytes=200_000,
                                   variants=["SeNER"], vocab_size=100)
    assert [(r.peak_bytes, r.over_budget) for r in tight] == [(128_000, False), (256_000, True), (None, True)]
    assert ablations.max_length_within_budget(rows) == {"SeNER": 256, "w/o whole-word masking": 256,
                                                        "w/o arrow (full attention)": 256}
    assert ablations.max_length_within_budget(tight + [ablations.MemoryRow("x", 128, 10**9, True)])["x"] is None
    markdown = ablations.memory_table(tight, 200_000)
    assert "| SeNER | 0.1 | 0.2 (> budget) | > budget |" in markdown


def test_f1_table_reports_the_difference_to_sener():
    scores = {"SeNER": {"precision": 0.5, "recall": 0.25, "f1": 1 / 3},
              "w/o LogN": {"precision": 0.2, "recall": 0.2, "f1": 0.2}}
    lines = ablations.f1_table(scores).splitlines()
    assert lines[2] == "| SeNER | 50.00 | 25.00 | 33.33 |  |"
    assert lines[3] == "| w/o LogN | 20.00 | 20.00 | 20.00 | -13.33 |"


def test_compiled_peak_covers_params_optimizer_state_and_batch():
    config = ablations.variant_config(demo.get_config("tiny"), "SeNER")
    config.model.encoder.num_hidden_layers = 1
    model_config = train_step.model_config_from(config, 300, 3)
    state, frozen, _ = train_step.abstract_train_state(config, model_config)
    batch = train_step.abstract_batch(1, 64, 62, model_config.head.band_half_width, 3)
    argument_bytes = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
                         for x in jax.tree.leaves((state, frozen, batch)))
    short = ablations.train_step_peak_bytes(config, 64, vocab_size=300, num_types=3)
    assert short > argument_bytes
    with pytest.raises(ValueError, match="n_tokens=2"):
        ablations.train_step_peak_bytes(config, 2)
    with pytest.raises(ValueError, match="'compiled' or 'analytic'"):
        ablations.train_step_peak_bytes(config, 64, method="exact")
