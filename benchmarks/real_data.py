"""Does domain-adaptive pretraining help? Fine-tune the same small encoder from random weights and
after pretraining on the shared unlabelled text, on Scholar-XL and Profiling-07 (real data).

    python benchmarks/real_data.py --workdir=runs/real_data                         # full budget
    python benchmarks/real_data.py --workdir=/tmp/rd --pretrain_steps=40 --epochs=1 # smoke budget

The defaults are the recorded run: ~56 min of pretraining and ~25 min per fine-tuning arm on the
2-core development machine.

Stages (`--stages`, default all, in this order): `pretrain`, `random` (fine-tune the random arm),
`pretrained` (needs the pretrain stage's encoder), `report` (reads every stage's JSON from WORKDIR).
The random arm does not depend on pretraining, so on a machine with time to spare the two may run
as separate processes: `--stages=pretrain` and `--stages=random`, then `--stages=pretrained,report`.

Splits: each shared dev file (the only labelled split we have) is split BY DOCUMENT with
numpy.random.default_rng(SPLIT_SEED = 0): a permutation of the document order, first 70% train,
next 10% dev (early stopping / best checkpoint), last 20% evaluation (reported). The ids of each
part are written to WORKDIR/splits/<dataset>/<part>.jsonl.
Pretraining corpus: the text (labels ignored) of SciREX (all 250 documents) and of the train and
dev parts of Scholar-XL and Profiling-07 (by default never an evaluation part); `--task_text_repeat=N` reads
those task parts N times per pass (`pretrain.files` entries `PATH@N`); `--pretrain_on_eval_text` adds
the evaluation parts' text as well (transductive; their entities are dropped when read, as every
corpus file's). One pretraining run serves both datasets. `--pretrain_objective=rtd` pretrains with
replaced-token detection (DeBERTa-v3's objective) instead of masked-LM.
Fine-tuning: the encoder of `configs/pretrain.py` (4 x 128, DeBERTa-v3 tokenizer, arrow window
64, LogN), full fine-tuning, the same budget (epochs, batch, learning rates, seed) for (a) random
weights and (b) the pretrained encoder (`model.pretrained=WORKDIR/pretrain/encoder`).
Output: WORKDIR/results.json and a Markdown table (micro and per-type F1 on the evaluation part,
the pretraining loss curve, wall times) printed and written to WORKDIR/results.md.
"""
from __future__ import annotations

import json
import logging
import pathlib
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import pretrain as pretrain_configs  # noqa: E402
from configs import profiling07, scholarxl  # noqa: E402
from configs.base import shared_path  # noqa: E402
from sener_jax.pretrain import ENCODER_DIR, LOG_FILE, pretrain  # noqa: E402
from sener_jax.train import train_and_evaluate  # noqa: E402

SPLIT_SEED = 0
FRACTIONS = (0.7, 0.1, 0.2)  # train, dev, evaluation
DATASETS = {"scholar-xl": scholarxl, "profiling-07": profiling07}

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
# Pretraining defaults: configs/pretrain.py's CPU default, the recorded run (benchmarks/RESULTS.md).
_PRETRAIN_DEFAULT = pretrain_configs.get_config()
_PRETRAIN_STEPS = flags.DEFINE_integer("pretrain_steps", _PRETRAIN_DEFAULT.pretrain.max_steps, "Pretraining steps.")
_EPOCHS = flags.DEFINE_integer("epochs", 8, "Fine-tuning epochs (same for both arms).")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 512, "Segment length (pretraining and fine-tuning).")
_DATASETS = flags.DEFINE_list("datasets", list(DATASETS), "Datasets to fine-tune on.")
_STAGES = flags.DEFINE_list("stages", ["pretrain", "random", "pretrained", "report"], "Stages to run (see docstring).")
_PRETRAIN_BATCH = flags.DEFINE_integer("pretrain_batch", _PRETRAIN_DEFAULT.pretrain.batch_size,
                                       "Pretraining batch (segments).")
_PRETRAIN_LR = flags.DEFINE_float("pretrain_lr", _PRETRAIN_DEFAULT.pretrain.lr, "Pretraining peak learning rate.")
_PRETRAIN_SEED = flags.DEFINE_integer("pretrain_seed", _PRETRAIN_DEFAULT.seed, "config.seed of pretraining (encoder "
                                      "init, segment order, masking); `--seed` is the fine-tuning seed.")
# Dropout draws random bits for every activation: on XLA:CPU that is ~37% of a pretraining step
# (batch 16 x 512, 4 x 128: 12.0 s with dropout vs 7.5 s without, measured on 2 shared cores), and a
# few epochs over a small corpus underfit rather than overfit.
_PRETRAIN_DROPOUT = flags.DEFINE_float("pretrain_dropout", _PRETRAIN_DEFAULT.model.encoder.hidden_dropout_prob,
                                       "Encoder hidden and attention dropout in pretraining.")
_TASK_TEXT_REPEAT = flags.DEFINE_integer(
    "task_text_repeat", pretrain_configs.TASK_TEXT_REPEAT, "Each pretraining pass reads the train and dev texts of Scholar-XL and Profiling-07 this many "
    "times (SciREX once): task-adaptive upsampling; they are ~13% of the corpus's tokens.")
_EVAL_TEXT = flags.DEFINE_bool(
    "pretrain_on_eval_text", False, "Also pretrain on the TEXT of the evaluation parts (read as the other "
    "parts, `--task_text_repeat` times; their entities are dropped when read, as every corpus file's): "
    "transductive task-adaptive pretraining, which the issue allows (never the evaluation labels).")
_SPAN_WORDS = flags.DEFINE_integer(
    "pretrain_span_words", _PRETRAIN_DEFAULT.pretrain.span_words, "pretrain.span_words: 1 masks single whole "
    "words; k > 1 masks spans of 1..k consecutive whole words (SpanBERT-style; same masking rate).")
_OBJECTIVE = flags.DEFINE_enum(
    "pretrain_objective", _PRETRAIN_DEFAULT.pretrain.objective, ["mlm", "rtd"], "pretrain.objective: masked-LM, "
    "or DeBERTa-v3's replaced-token detection (a half-depth generator, the encoder as discriminator).")
_POSITIVE_WEIGHT = flags.DEFINE_float("positive_weight", 10.0, "train.positive_weight of both arms (paper: 1.0; at 3.0, "
                                       "with the paper's regularisation, no arm predicted an entity in 4 epochs).")
# Head LR: the demo's (configs/demo.py). Encoder LR 3e-4: better than 1.5e-3 for both arms (RESULTS.md).
_LR_ENCODER = flags.DEFINE_float("lr_encoder", 3e-4, "Fine-tuning peak LR of the encoder (both arms); at 1.5e-3 "
                                  "the pretrained arm never predicted an entity (RESULTS.md).")
_LAYER_LR_DECAY = flags.DEFINE_float(
    "layer_lr_decay", 1.0, "train.layer_lr_decay of both arms: layer k below the encoder's top trains at "
    "decay**k x lr_encoder, the embeddings at decay**4 (1.0: off, the paper's).")
_REINIT = flags.DEFINE_integer("reinit_top_layers", 0, "model.reinit_top_layers of the PRETRAINED arm: its top "
                                "layers start from random weights (the random arm's are random already).")
_LR_HEAD = flags.DEFINE_float("lr_head", 3e-3, "Fine-tuning peak LR of the span head (both arms).")
_MAX_SPAN_WORDS = flags.DEFINE_integer("max_span_words", 65, "Longest span the head scores (both arms).")
# The paper's regularisation (whole-word masking 0.15, head MLP dropout 0.4, encoder dropout 0.1) is
# made for a pretrained large encoder; with it, a 4 x 128 encoder predicted no entity at all after 4
# epochs on either arm (RESULTS.md). The demo's lighter values are the defaults here.
_WWM = flags.DEFINE_float("mask_probability", 0.0, "data.mask_probability during fine-tuning (paper: 0.15).")
_MLP_DROPOUT = flags.DEFINE_float("mlp_dropout", 0.1, "model.head.mlp_dropout (paper: 0.4).")
_ENCODER_DROPOUT = flags.DEFINE_float("encoder_dropout", 0.0, "Encoder hidden and attention dropout in fine-tuning.")
_SEED = flags.DEFINE_integer("seed", 0, "Fine-tuning seed of both arms (head init, shuffling; the random arm's encoder init).")
ARMS = ("random", "pretrained")


def split_file(source: str, out_dir: pathlib.Path) -> dict[str, str]:
    """The lines of `source` split by document into train/dev/test files (see the module docstring)."""
    lines = [line for line in pathlib.Path(source).read_text(encoding="utf-8").splitlines() if line.strip()]
    order = np.random.default_rng(SPLIT_SEED).permutation(len(lines))
    n_train, n_dev = int(round(FRACTIONS[0] * len(lines))), int(round(FRACTIONS[1] * len(lines)))
    parts = {"train": order[:n_train], "dev": order[n_train : n_train + n_dev], "test": order[n_train + n_dev :]}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for part, indices in parts.items():
        path = out_dir / f"{part}.jsonl"
        text = "".join(lines[i] + "\n" for i in sorted(indices))
        # Stages may run as concurrent processes: never rewrite a file another one may be reading.
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        paths[part] = str(path)
    return paths


def run_pretraining(workdir: pathlib.Path, splits: dict) -> dict:
    config = pretrain_configs.get_config()
    files = [shared_path("scirex", "docs.jsonl.gz")]
    repeat = f"@{_TASK_TEXT_REPEAT.value}" if _TASK_TEXT_REPEAT.value > 1 else ""
    parts = ("train", "dev", "test") if _EVAL_TEXT.value else ("train", "dev")
    files += [paths[part] + repeat for paths in splits.values() for part in parts]
    config.pretrain.files = ",".join(files)
    config.pretrain.max_steps = _PRETRAIN_STEPS.value
    config.pretrain.batch_size = _PRETRAIN_BATCH.value
    config.pretrain.lr = _PRETRAIN_LR.value
    config.seed = _PRETRAIN_SEED.value
    config.pretrain.span_words = _SPAN_WORDS.value
    config.pretrain.objective = _OBJECTIVE.value
    config.model.encoder.update(dict(hidden_dropout_prob=_PRETRAIN_DROPOUT.value,
                                     attention_probs_dropout_prob=_PRETRAIN_DROPOUT.value))
    config.pretrain.log_every_steps = max(1, min(50, _PRETRAIN_STEPS.value // 10))
    config.data.max_tokens = _MAX_TOKENS.value
    return pretrain(config, workdir / "pretrain")


def finetune_config(dataset: str, paths: dict, pretrained: str):
    """The dataset's paper config at the small CPU geometry of configs/pretrain.py; only
    `model.pretrained` differs between the two arms."""
    config = DATASETS[dataset].get_config()
    small = pretrain_configs.get_config()
    config.model.encoder = small.model.encoder
    config.model.pretrained = pretrained
    config.model.reinit_top_layers = _REINIT.value if pretrained else 0
    # No BiSPA block: on CPU one block multiplies the step time by ~10 (configs/demo.py); both arms alike.
    config.model.head.update(dict(biaffine_dim=64, channels=16, num_blocks=0, max_span_words=_MAX_SPAN_WORDS.value,
                                  mlp_dropout=_MLP_DROPOUT.value))
    config.model.encoder.update(dict(hidden_dropout_prob=_ENCODER_DROPOUT.value,
                                     attention_probs_dropout_prob=_ENCODER_DROPOUT.value))
    config.data.mask_probability = _WWM.value
    config.data.update(dict(train_path=paths["train"], dev_path=paths["dev"], test_path=paths["test"],
                            tokenizer=small.data.tokenizer, max_tokens=_MAX_TOKENS.value, overlap_words=64,
                            token_bucket_base=_MAX_TOKENS.value,
                            word_bucket_base=_MAX_TOKENS.value))  # one bucket: one compiled program
    config.train.update(dict(finetune="full", lr_encoder=_LR_ENCODER.value, lr_head=_LR_HEAD.value, batch_size=8,
                             layer_lr_decay=_LAYER_LR_DECAY.value,
                             num_epochs=_EPOCHS.value, log_every_steps=20,
                             # the whole budget: a random encoder's dev F1 sits at 0 for several epochs
                             patience=_EPOCHS.value,
                             positive_weight=_POSITIVE_WEIGHT.value))
    config.eval.splits = ("dev", "test")
    config.seed = _SEED.value
    return config


def summarise(results: dict) -> dict:
    test = results["test"]
    return {"micro_f1": test["micro"]["f1"], "micro": test["micro"],
            "per_type_f1": {label: row["f1"] for label, row in test["per_type"].items()}}


def markdown(report: dict) -> str:
    pre, lines = report["pretrain"], []
    if pre is not None:
        lines = [f"pretraining: {pre['steps']} steps on {pre['segments']} segments, MLM softmax over "
                 f"{pre.get('output_vocab', 'all')} ids, probe MLM loss {pre['probe_loss_before']:.3f} -> "
                 f"{pre['probe_loss_after']:.3f}"
                 + (f" (the generator's), probe RTD loss {pre['probe_rtd_before']:.3f} -> {pre['probe_rtd_after']:.3f}"
                    if "probe_rtd_after" in pre else "") + f", {pre['wall_s']:.0f} s",
                 "loss curve (step: loss): " + ", ".join(f"{s}: {l:.3f}" for s, l in pre["curve"]), ""]
    for dataset, arms in report["finetune"].items():
        labels = sorted({label for arm in ARMS if arm in arms for label in arms[arm]["per_type_f1"]})
        lines += [f"### {dataset} (evaluation part, {arms['n_test_docs']} documents)", "",
                  "| arm | micro F1 | wall s | " + " | ".join(labels) + " |",
                  "|---|---:|---:|" + "---:|" * len(labels)]
        for arm in [a for a in ARMS if a in arms]:
            row = arms[arm]
            lines.append(f"| {arm} | {row['micro_f1']:.4f} | {row['wall_s']:.0f} | "
                         + " | ".join(f"{row['per_type_f1'].get(label, 0.0):.3f}" for label in labels) + " |")
        lines.append("")
    return "\n".join(lines)


def finetune_arm(workdir: pathlib.Path, splits: dict, dataset: str, arm: str) -> dict:
    """Fine-tunes one arm; writes and returns WORKDIR/finetune/<dataset>/<arm>/summary.json."""
    pretrained = "" if arm == "random" else str(workdir / "pretrain" / ENCODER_DIR)
    if pretrained and not (workdir / "pretrain" / ENCODER_DIR).exists():
        raise SystemExit(f"{workdir / 'pretrain' / ENCODER_DIR} is missing: run --stages=pretrain first")
    out = workdir / "finetune" / dataset / arm
    start = time.perf_counter()
    results = train_and_evaluate(finetune_config(dataset, splits[dataset], pretrained), out)
    summary = {**summarise(results), "wall_s": time.perf_counter() - start, "positive_weight": _POSITIVE_WEIGHT.value,
               "epochs": _EPOCHS.value, "lr_encoder": _LR_ENCODER.value, "lr_head": _LR_HEAD.value,
               "layer_lr_decay": _LAYER_LR_DECAY.value, "reinit_top_layers": _REINIT.value if pretrained else 0,
               "max_span_words": _MAX_SPAN_WORDS.value, "mask_probability": _WWM.value,
               "mlp_dropout": _MLP_DROPOUT.value, "encoder_dropout": _ENCODER_DROPOUT.value, "seed": _SEED.value}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def report(workdir: pathlib.Path, splits: dict) -> str:
    """results.json / results.md from the stages' files (an arm not run yet is left out)."""
    pretrain_log = workdir / "pretrain" / LOG_FILE
    result = {"split_seed": SPLIT_SEED, "fractions": FRACTIONS,
              "pretrain": json.loads(pretrain_log.read_text()) if pretrain_log.exists() else None, "finetune": {}}
    for dataset in _DATASETS.value:
        arms = {"n_test_docs": sum(1 for _ in open(splits[dataset]["test"], encoding="utf-8"))}
        for arm in ARMS:
            path = workdir / "finetune" / dataset / arm / "summary.json"
            if path.exists():
                arms[arm] = json.loads(path.read_text())
        result["finetune"][dataset] = arms
    (workdir / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    (workdir / "results.md").write_text(text + "\n")
    return text


def main(argv):
    del argv
    # As sener_jax.main: our progress at INFO, libraries (Orbax logs every file) at WARNING.
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("sener_jax").setLevel(logging.INFO)
    unknown = set(_STAGES.value) - {"pretrain", *ARMS, "report"}
    if unknown:
        raise SystemExit(f"--stages: unknown {sorted(unknown)} (expected pretrain, random, pretrained, report)")
    workdir = pathlib.Path(_WORKDIR.value).absolute()
    splits = {name: split_file(shared_path(name, "dev.json"), workdir / "splits" / name) for name in DATASETS}
    if "pretrain" in _STAGES.value:
        run_pretraining(workdir, splits)
    for arm in ARMS:
        if arm in _STAGES.value:
            for dataset in _DATASETS.value:
                finetune_arm(workdir, splits, dataset, arm)
    if "report" in _STAGES.value:
        print(report(workdir, splits))


if __name__ == "__main__":
    app.run(main)
