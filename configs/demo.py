"""The demo: a tiny randomly initialised encoder trained on synthetic homepages, on 2 CPU cores.

    python -m sener_jax.main --config=configs/demo.py --workdir=/tmp/sener_demo

generates the synthetic data into WORKDIR/data, trains, evaluates on dev and test, and exports
the model to WORKDIR/export (then: `Extractor.load("/tmp/sener_demo/export").extract(text)`).
"""
import pathlib
import sys

# config_flags loads this file by path: make `configs.base` importable from any working directory.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs.base import TINY_ENCODER, get_base_config  # noqa: E402


def get_config(arg=None):
    config = get_base_config()
    config.seed = 0
    config.model.pretrained = ""
    config.model.encoder.update(TINY_ENCODER)
    config.model.encoder.update(dict(hidden_size=96, num_attention_heads=4, intermediate_size=192, window=32,
                                     position_buckets=32, max_relative_positions=64, lora_rank=0))
    # No BiSPA blocks in the demo: on 2 CPU cores one block multiplies the step time by ~10
    # (K x K attention per word with K = 129); the dataset configs keep the paper's 2 blocks.
    config.model.head.update(dict(max_span_words=65, biaffine_dim=48, channels=16, num_blocks=0, mlp_dropout=0.1,
                                  bispa_dropout=0.1, row_chunk=128))
    config.data.name = "synthetic"
    config.data.synthetic = dict(enabled=True, preset="small", seed=0, n_train=120, n_dev=20, n_test=20)
    config.data.tokenizer = "synthetic"
    config.data.max_tokens = 512
    config.data.overlap_words = 64
    # One bucket (512 tokens, 510 words): a single compiled training program.
    config.data.token_bucket_base = 512
    config.data.word_bucket_base = 512
    # A randomly initialised encoder: train all of it (LoRA on random weights would learn little).
    config.train.finetune = "full"
    config.train.lr_head = 3e-3
    config.train.lr_encoder = 1.5e-3
    config.train.batch_size = 8
    config.train.num_epochs = 14
    config.train.patience = 4
    # No whole-word masking: a randomly initialised encoder learns the synthetic cues faster without
    # input corruption (the dataset configs keep the paper's 15%).
    config.data.mask_probability = 0.0
    config.train.log_every_steps = 20
    config.eval.batch_size = 8
    if arg == "tiny":
        config.data.synthetic = dict(enabled=True, preset="tiny", seed=0, n_train=8, n_dev=2, n_test=2)
        config.data.max_tokens = 128
        config.data.overlap_words = 16
        config.data.word_bucket_base = 128  # one (128, 126) bucket: one compiled program each
        config.model.head.update(dict(max_span_words=17, row_chunk=128))
        config.train.num_epochs = 1
        config.train.max_steps = 2
    elif arg:
        raise ValueError(f"configs/demo.py: unknown variant {arg!r} (expected nothing or 'tiny')")
    return config
