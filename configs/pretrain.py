"""Domain-adaptive pretraining (`--mode=pretrain`): masked-LM training of the encoder on unlabelled text.

    python -m sener_jax.main --mode=pretrain --config=configs/pretrain.py --workdir=runs/pt \
        --config.pretrain.files='corpus/*.txt,more/*.jsonl.gz'

writes runs/pt/encoder; fine-tune from it with `--config.model.pretrained=runs/pt/encoder`.

Variants:
- default (CPU-sized): 4 layers x 128 hidden, 4 heads, FFN 512, the DeBERTa-v3 tokenizer
  (vocabulary 128,001 ids), segments of <= 512 tokens, arrow window 64. About 17.2M parameters, of
  which 16.4M are the word embeddings (the vocabulary is fixed by the tokenizer fine-tuning uses) and
  0.8M the transformer: the smallest encoder that still has several layers of arrow attention, so
  that a CPU can pretrain it at all. The MLM logits are computed only at the masked positions (<= 85 per
  512-token row). The schedule is the one measured in benchmarks/RESULTS.md ("Domain-adaptive pretraining
  that learns context"):
  batch 8, peak LR 1e-3, 2,300 steps, NO dropout (a few passes over a small corpus underfit rather than
  overfit, and on XLA:CPU dropout's random bits cost ~37% of a step): 55.9 min on the idle 2-core
  development machine (1.45 s per step), MLM loss 10.47 -> 4.00 against a unigram entropy of 6.98 nats
  (~5 passes over the benchmark corpus's 3,639 segments; with the upsampling below, 7,699 segments and
  ~2.4 passes: 56.1 min, probe loss 4.48 on the mixed corpus). With batch 16, LR 5e-4-3e-3 and dropout 0.1
  the loss sat at the unigram level for the first 200-250 steps (the encoder learnt token frequencies,
  not context), and fine-tuning from a 200-step encoder of that kind was no better than from random
  weights. The corpus reads the homepage datasets' texts 8 times per pass (`TASK_TEXT_REPEAT`, below):
  same time, and the Profiling-07 fine-tuning that pretraining had made worse (0.012 vs 0.060 F1 from
  random weights) became better (0.087); Scholar-XL 0.206 (was 0.203) vs 0.152.
- `:tiny`: the synthetic tokenizer and a 2-layer x 64 encoder, 64-token segments: seconds (tests).
- `:large`: DeBERTa-v3-large geometry (24 x 1024, 434M parameters) continuing from
  `microsoft/deberta-v3-large` on a GPU: 5,120-token segments as SciREX fine-tuning, bfloat16
  compute, rematerialisation, peak LR 3e-5.
The masking rate, whole-word span length, the 80/10/10 rule and the LR schedule (linear warm-up over
`warmup_fraction` of the steps, then linear decay to 0) are the `pretrain.*` values below.
"""
import pathlib
import sys

# config_flags loads this file by path: make `configs.base` importable from any working directory.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs.base import DEBERTA_V3_LARGE, TINY_ENCODER, get_base_config, shared_path  # noqa: E402

CPU_ENCODER = dict(TINY_ENCODER, hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
                   position_buckets=64, max_relative_positions=128, hidden_dropout_prob=0.1,
                   attention_probs_dropout_prob=0.1)


# The homepage texts (Scholar-XL, Profiling-07) are ~13% of the shared corpus's tokens (SciREX papers are
# the rest); read 8 times per pass they are ~60% of what the encoder sees. In benchmarks/RESULTS.md this
# took Profiling-07 fine-tuning from 0.012 to 0.087 F1 (random weights: 0.060) at the same 56 min.
TASK_TEXT_REPEAT = 8


def shared_texts() -> str:
    """The texts of the shared datasets (labels are ignored), comma-separated; missing ones left out;
    the homepage datasets upsampled (`@TASK_TEXT_REPEAT`)."""
    entries = [(shared_path("scirex", "docs.jsonl.gz"), 1), (shared_path("scholar-xl", "dev.json"), TASK_TEXT_REPEAT),
               (shared_path("profiling-07", "dev.json"), TASK_TEXT_REPEAT)]
    return ",".join(f"{path}@{times}" if times > 1 else path for path, times in entries if path)


def pretrain_block() -> dict:
    return dict(
        # comma-separated paths or globs: .txt/.txt.gz (one document per file) or JSON lines; `PATTERN@N`
        # counts its documents N times per pass (upsampling the target domain, sener_jax/data/corpus.py)
        files=shared_texts(),
        # "mlm": masked-language modelling; "rtd": replaced-token detection, DeBERTa-v3's objective (ELECTRA
        # with gradient-disentangled embedding sharing, sener_jax/models/rtd.py): a generator of
        # `generator_layers` layers (0: half the encoder's) fills the masked words by sampling, and the
        # encoder learns to tell, for EVERY token, whether it was replaced; loss = generator MLM loss +
        # rtd_weight x discriminator loss (50, as ELECTRA and DeBERTa-v3).
        objective="mlm",
        generator_layers=0,
        rtd_weight=50.0,
        mask_probability=0.15,  # share of each segment's tokens predicted (taken as whole words)
        span_words=1,  # 1: single whole words; k > 1: spans of 1..k consecutive whole words
        mask_token=0.8,  # of the chosen tokens: replaced by [MASK] ...
        random_token=0.1,  # ... by a random token; the rest (0.1) are kept
        batch_size=8,  # global, over all devices
        # > 0: number of steps; 0: num_epochs passes over the segments. 2,300: on Scholar-XL, encoders pretrained
        # for 1,500 and 3,000 steps fine-tuned worse (RESULTS.md, "Pretraining length").
        max_steps=2300,
        num_epochs=1,
        lr=1e-3,  # peak learning rate (encoder and MLM head)
        warmup_fraction=0.06,
        weight_decay=0.01,
        adam_b1=0.9,
        adam_b2=0.98,
        adam_eps=1e-6,
        grad_clip_norm=1.0,
        log_every_steps=50,
        checkpoint_every_steps=500,  # the last step is always saved
        probe_batches=4,  # fixed batches whose MLM loss is reported before and after
        # "corpus": the MLM softmax runs over the token ids that occur in the corpus (exact for it: no
        # other id can be a target); "full": over the whole vocabulary (needed only when the head is
        # reused on other text). On the shared data 35,763 of 128,001 ids: the step's largest matmul /3.6.
        output_vocab="corpus",
    )


def get_config(arg=None):
    config = get_base_config()
    config.seed = 0
    config.model.pretrained = ""
    config.model.encoder.update(CPU_ENCODER)
    config.model.encoder.update(dict(window=64, lora_rank=0))
    # No dropout in pretraining (see the docstring); fine-tuning sets its own.
    config.model.encoder.update(dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    config.data.name = "pretrain"
    config.data.max_tokens = 512
    config.data.overlap_words = 0  # no entity has to fit in one segment: no overlap needed
    # One (512, 512) bucket: a single compiled step (long documents fill most segments anyway, and
    # on a CPU each extra bucket costs a compile of a minute or more).
    config.data.token_bucket_base = 512
    config.data.word_bucket_base = 512
    config.pretrain = pretrain_block()
    if arg == "tiny":
        config.model.encoder.update(dict(TINY_ENCODER, window=16, lora_rank=0))
        config.data.tokenizer = "synthetic"
        config.data.max_tokens = 64
        config.data.token_bucket_base = 64
        config.data.word_bucket_base = 64
        config.pretrain.update(dict(files="", batch_size=8, max_steps=40, lr=3e-3, warmup_fraction=0.1,
                                    log_every_steps=10, checkpoint_every_steps=20, probe_batches=2))
    elif arg == "large":
        config.model.pretrained = "microsoft/deberta-v3-large"
        config.model.encoder.update(dict(DEBERTA_V3_LARGE, window=128, lora_rank=0, dtype="bfloat16", remat="layer"))
        config.data.max_tokens = 5120
        config.data.token_bucket_base = 1024
        config.data.word_bucket_base = 1024
        config.pretrain.update(dict(batch_size=8, max_steps=20000, lr=3e-5, log_every_steps=100,
                                    checkpoint_every_steps=1000))
    elif arg:
        raise ValueError(f"configs/pretrain.py: unknown variant {arg!r} (expected nothing, 'tiny' or 'large')")
    return config
