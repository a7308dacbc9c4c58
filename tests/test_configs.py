"""Configs: paper hyperparameters, tiny variants, command-line overrides, unknown keys."""
import subprocess
import sys

import pytest

from configs import demo, profiling07, scholarxl, scirex
from sener_jax import optim


@pytest.mark.parametrize(
    "module, lr_lora, max_tokens", [(scholarxl, 4e-4, 1024), (scirex, 3e-4, 5120), (profiling07, 2e-4, 5120)]
)
def test_dataset_configs_carry_the_paper_recipe(module, lr_lora, max_tokens):
    c = module.get_config()
    assert c.train.lr_lora == lr_lora and c.train.lr_head == 7e-4
    assert (c.train.batch_size, c.train.num_epochs, c.train.patience) == (16, 30, 10)
    assert (c.train.grad_clip_norm, c.train.weight_decay, c.train.warmup_fraction) == (1.0, 0.01, 0.1)
    assert (c.model.encoder.lora_rank, c.model.encoder.lora_alpha) == (8, 16.0)
    assert c.model.encoder.hidden_size == 1024 and c.model.encoder.num_hidden_layers == 24
    assert c.model.encoder.attention == "arrow" and c.model.encoder.window == 128
    assert c.model.head.max_span_words == 129 and c.data.max_tokens == max_tokens
    assert c.model.pretrained == "microsoft/deberta-v3-large"
    tiny = module.get_config("tiny")
    assert tiny.model.encoder.hidden_size < 256 and tiny.train.max_steps <= 5 and tiny.model.pretrained == ""
    with pytest.raises(ValueError, match="unknown variant"):
        module.get_config("huge")


def test_demo_config_is_small_and_synthetic():
    c = demo.get_config()
    assert c.data.synthetic.enabled and c.model.pretrained == ""
    assert c.model.encoder.num_hidden_layers <= 4 and c.model.encoder.hidden_size <= 128


def test_learning_rate_schedule_warms_up_then_decays_to_zero():
    schedule = optim.learning_rate_schedule(1.0, total_steps=100, warmup_fraction=0.1)
    assert float(schedule(0)) == 0.0 and float(schedule(10)) == pytest.approx(1.0)
    assert float(schedule(5)) == pytest.approx(0.5) and float(schedule(55)) == pytest.approx(0.5)
    assert float(schedule(100)) == pytest.approx(0.0)


def test_param_labels_follow_the_paper_groups():
    path = lambda s: tuple(s.split("/"))  # noqa: E731
    q = "encoder/encoder/layer/attention/self/query_proj"
    assert optim.param_label(path(q + "/lora_a"), "lora") == "lora/decay"
    assert optim.param_label(path(q + "/bias"), "lora") == "lora/no_decay"
    assert optim.param_label(path(q + "/kernel"), "lora") == "frozen"
    assert optim.param_label(path("encoder/encoder/layer/attention/self/key_proj/bias"), "lora") == "frozen"
    assert optim.param_label(path("encoder/embeddings/LayerNorm/scale"), "full") == "encoder/no_decay"
    assert optim.param_label(path("head/cross_layers_0/norm1/scale"), "lora") == "head/no_decay"
    assert optim.param_label(path("head/down_fc/kernel"), "head") == "head/decay"
    assert optim.param_label(path(q + "/lora_b"), "head") == "frozen"
    with pytest.raises(ValueError, match="finetune"):
        optim.param_label(path("head/U"), "most")


def _run_main(*flags):
    return subprocess.run(
        [sys.executable, "-m", "sener_jax.main", "--mode=config", "--workdir=/tmp/unused", *flags],
        capture_output=True, text=True, timeout=120,
    )


def test_command_line_overrides_and_unknown_keys():
    ok = _run_main("--config=configs/scirex.py:tiny", "--config.train.lr_head=0.123")
    assert ok.returncode == 0, ok.stderr
    assert "lr_head: 0.123" in ok.stdout
    bad = _run_main("--config=configs/scirex.py:tiny", "--config.train.lr_hed=0.1")
    assert bad.returncode != 0 and "lr_hed" in bad.stderr and "lr_head" in bad.stderr
