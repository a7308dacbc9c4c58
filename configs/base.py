"""Shared defaults for every config: the paper's training recipe (SPEC section 8).

A config file `configs/<name>.py` defines `get_config(arg=None)`; `arg` is what follows the colon
in `--config=configs/<name>.py:<arg>` (e.g. `tiny`). Any value can be overridden on the command
line, e.g. `--config.train.lr_head=1e-3`; an unknown key is an error (ml_collections refuses it).
"""
from __future__ import annotations

import dataclasses
import pathlib

import ml_collections

from sener_jax.models.encoder_config import SenerSettings

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()

# Hugging Face `microsoft/deberta-v3-large` config.json, in EncoderConfig field names.
DEBERTA_V3_LARGE = dict(
    vocab_size=128100,
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    hidden_act="gelu",
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    layer_norm_eps=1e-7,
    relative_attention=True,
    max_relative_positions=-1,
    position_buckets=256,
    pos_att_type=("p2c", "c2p"),
    share_att_key=True,
    norm_rel_ebd="layer_norm",
    position_biased_input=False,
    max_position_embeddings=512,
    type_vocab_size=0,
    pad_token_id=0,
)

# SeNER's choices on top of the backbone: every SenerSettings field (models/encoder_config.py),
# its defaults overridden by the paper's values.
SENER_ENCODER = dict(
    dataclasses.asdict(SenerSettings()),
    attention="arrow",
    lora_rank=8,
    remat="layer",  # per-layer rematerialisation: the paper-scale step needs it (benchmarks/RESULTS.md)
)

# Tiny geometry for tests and the demo (random weights).
TINY_ENCODER = dict(
    DEBERTA_V3_LARGE,
    vocab_size=0,  # 0: take the tokenizer's vocabulary size
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    position_buckets=32,
    max_relative_positions=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def shared_path(*parts: str) -> str:
    """A path under ../shared/data when it exists, else '' (the user must set it)."""
    path = SHARED_DATA.joinpath(*parts)
    return str(path) if path.exists() else ""


def get_base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 2288  # the paper's seeds: 2288, 3618, 4937

    config.model = ml_collections.ConfigDict()
    # Pretrained encoder: a Hugging Face name or directory (converted on the fly) or an Orbax
    # checkpoint written by sener_jax.convert. Empty: random initialisation (logged loudly).
    config.model.pretrained = ""
    # Re-initialise this many of the pretrained encoder's top layers before fine-tuning (0: none, the
    # paper). The layers nearest the output are the most specific to the pretraining objective.
    config.model.reinit_top_layers = 0
    config.model.encoder = ml_collections.ConfigDict(dict(DEBERTA_V3_LARGE, **SENER_ENCODER))
    config.model.head = ml_collections.ConfigDict(
        dict(
            max_span_words=129,  # longest span in words: |j - i| <= w' = 128 (SPEC's w')
            biaffine_dim=100,
            channels=32,
            num_blocks=2,
            impl="band",
            bispa_alignment="original",
            use_bispa=True,
            mlp_dropout=0.4,
            bispa_dropout=0.2,
            row_chunk=32,  # rows of K x K attention maps at a time (see SpanHeadConfig.row_chunk)
        )
    )
    # Subword -> word max-pooling: "segment" (scatter-max, O(N)) or "reference" (the (L, N) twin).
    config.model.pool_impl = "segment"

    config.data = ml_collections.ConfigDict()
    config.data.name = ""
    config.data.format = "auto"
    config.data.train_path = ""
    config.data.dev_path = ""
    config.data.test_path = ""
    # One file split by document order into train/dev/test (used when train_path is empty).
    config.data.single_file = ""
    config.data.split_fractions = (0.8, 0.1, 0.1)
    config.data.tokenizer = shared_path("deberta-v3-tokenizer") or "microsoft/deberta-v3-large"
    config.data.max_tokens = 5120
    config.data.overlap_words = 128
    # Padded lengths: base * 2**k up to max_tokens (one compiled program per bucket pair).
    config.data.token_bucket_base = 128
    config.data.word_bucket_base = 32
    # > 0: at most this many (tokens, words) batch shapes per split, chosen from the data's lengths to
    # minimise padding (multiples of the bases above); 0: the fixed base * 2**k buckets.
    config.data.max_buckets = 4
    # "spans": sparse (start, last, type) per row, dense band targets built on the device (a few KB
    # per batch); "dense": the host-built uint8 band (the reference; 67 MB at (16, 4096, 257, 4)).
    config.data.label_format = "spans"
    config.data.max_train_docs = 0  # 0: all
    config.data.max_eval_docs = 0
    config.data.mask_probability = 0.15  # whole-word masking (training only)
    # The authors' pipeline as switches (README "Differences from the original implementation"; `:paper`).
    config.data.segmentation = "words"  # "words" (cut between words, overlap) | "subwords" (theirs)
    config.data.merge = "margin"  # "margin" (ours) | "union" (theirs)
    config.data.mask_scope = "segment"  # "segment" (ours) | "document" (theirs)
    config.data.synthetic = ml_collections.ConfigDict({"enabled": False})

    config.train = ml_collections.ConfigDict()
    config.train.finetune = "lora"  # "lora" | "full" | "head"
    config.train.lr_head = 7e-4
    config.train.lr_lora = 3e-4
    config.train.lr_encoder = 2e-5
    config.train.batch_size = 16  # global, over all devices
    config.train.grad_accum_steps = 1
    # JAX's persistent compilation cache (reruns and resumes skip compiling); "" disables it.
    config.train.compilation_cache_dir = "~/.cache/sener_jax/jax"
    config.train.num_epochs = 30
    config.train.max_steps = 0  # 0: num_epochs decides; > 0 stops after that many micro-steps
    config.train.patience = 10  # epochs without dev-F1 improvement before stopping
    config.train.grad_clip_norm = 1.0
    # Weight of positive cells in the band BCE (1.0: the paper). Raise it when a small dataset trains
    # an encoder from scratch and recall stays near zero (benchmarks/real_data.py).
    config.train.positive_weight = 1.0
    config.train.weight_decay = 0.01
    # Layer-wise LR decay of the encoder (1.0: off, the paper): layer k below the top trains at
    # decay**k of its group's rate, the embeddings at decay**num_layers (sener_jax/optim.py).
    config.train.layer_lr_decay = 1.0
    config.train.warmup_fraction = 0.1
    config.train.adam_b1 = 0.9
    config.train.adam_b2 = 0.999
    config.train.adam_eps = 1e-8
    config.train.log_every_steps = 10
    config.train.checkpoint_every_steps = 0  # 0: at the end of every epoch only
    # NaN/inf loss or gradient norm (detected on the device every step, checked at log/checkpoint/
    # epoch boundaries): "stop" = error naming the step, no save, no export; "skip" = the update
    # is skipped on the device, stopping after max_consecutive_nonfinite skipped steps in a row.
    config.train.nonfinite = "stop"
    config.train.max_consecutive_nonfinite = 10
    # Multi-host: processes agree on a stop signal (SIGTERM/SIGUSR1) every this many steps.
    config.train.signal_sync_every_steps = 10
    config.train.eval_every_epochs = 1
    config.train.export = True  # write WORKDIR/export from the best checkpoint at the end
    config.train.batching = "buckets"  # "buckets" (length buckets) | "random" (theirs)
    config.train.schedule_steps = "batches"  # "batches" per epoch x epochs | "authors": (len // batch + 1) x epochs

    config.eval = ml_collections.ConfigDict()
    config.eval.threshold = 0.5
    config.eval.batch_size = 16
    config.eval.splits = ("dev", "test")
    config.eval.dev_batch_size = 0  # 0: eval.batch_size (the authors: dev 2, test 4)
    config.eval.test_batch_size = 0
    config.eval.boundary_word_crosses = True  # False: theirs (sharing one boundary word is not crossing)
    config.eval.batching = "buckets"  # "buckets" | "order" (theirs: input order)

    # Multi-process runs (sener_jax/distributed.py). Empty coordinator: single process, unless the
    # environment (SENER_COORDINATOR / SENER_NUM_PROCESSES / SENER_PROCESS_ID) or SLURM says otherwise.
    config.distributed = ml_collections.ConfigDict(
        dict(coordinator="", num_processes=0, process_id=0, local_device_ids="", timeout_s=300)
    )

    config.predict = ml_collections.ConfigDict()
    config.predict.export_dir = ""  # default: WORKDIR/export
    config.predict.input = ""  # JSON lines with "text" (and optional "id")
    config.predict.output = ""  # default: WORKDIR/predictions.jsonl
    config.predict.batch_size = 8
    # Start an existing predictions file over (another input or export); never touches a file
    # that is not a predictions file of ours.
    config.predict.overwrite = False
    return config


def make_tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks a dataset config to a few seconds of CPU: tiny encoder, few docs, few steps."""
    config.model.encoder.update(TINY_ENCODER)
    config.model.encoder.window = 16
    config.model.encoder.lora_rank = 4
    config.model.pretrained = ""
    config.model.head.update(dict(max_span_words=9, biaffine_dim=16, channels=8, num_blocks=1, mlp_dropout=0.0, bispa_dropout=0.0))
    config.data.max_tokens = 96
    config.data.overlap_words = 8
    # One (128 tokens, 94 words) bucket: a single compiled program for training and one for eval.
    config.data.token_bucket_base = 128
    config.data.word_bucket_base = 128
    config.data.max_train_docs = 2
    config.data.max_eval_docs = 2
    config.train.batch_size = 8
    config.train.num_epochs = 1
    config.train.max_steps = 2
    config.train.log_every_steps = 1
    config.eval.batch_size = 8
    config.eval.splits = ("dev",)
    return config


def use_authors_pipeline(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Every switch set to what the authors' code does (the `:paper` variants)."""
    config.data.update(dict(segmentation="subwords", merge="union", mask_scope="document"))
    config.model.encoder.logn_length = "padded"
    config.train.update(dict(batching="random", schedule_steps="authors"))
    config.eval.update(dict(dev_batch_size=2, test_batch_size=4, boundary_word_crosses=False, batching="order"))
    return config


VARIANTS = ("tiny", "paper", "paper_tiny")


def paper_config(name: str, lr_lora: float, max_tokens: int, arg, **data_fields) -> ml_collections.ConfigDict:
    """A dataset config with the paper's recipe; `arg == "tiny"` gives the test variant, "paper"
    the authors' pipeline (`use_authors_pipeline`), "paper_tiny" both (eval batches stay tiny's).

    The tiny variant trains on the dev file when no train file is configured (the shared folder
    holds only dev splits for Scholar-XL and Profiling-07).
    """
    config = get_base_config()
    config.data.name = name
    config.data.update(data_fields)
    config.data.max_tokens = max_tokens
    config.model.pretrained = "microsoft/deberta-v3-large"
    config.train.lr_lora = lr_lora
    if arg and arg not in VARIANTS:
        raise ValueError(f"configs/{name}.py: unknown variant {arg!r} (expected nothing or one of {VARIANTS})")
    if arg in ("paper", "paper_tiny"):
        use_authors_pipeline(config)
    if arg in ("tiny", "paper_tiny"):
        make_tiny(config)
        if not config.data.train_path and not config.data.single_file:
            config.data.train_path = config.data.dev_path
    if arg == "paper_tiny":  # tests run on 8 devices: evaluation batches must stay a multiple of 8
        config.eval.update(dict(dev_batch_size=0, test_batch_size=0))
    return config
