"""The modes of `python -m sener_jax.main` that need a workdir: train, eval, export, predict, pretrain, stats.

Kept apart from main.py so that flag parsing, `--help` and `--mode=config` do not import JAX and
the model (main.py imports this module only once it knows it needs it).
"""
from __future__ import annotations

import logging
import pathlib

import jax

from sener_jax import checkpointing, optim
from sener_jax.data import load_data
from sener_jax.data.coverage import report as coverage_report
from sener_jax.evaluate import evaluate_and_write
from sener_jax.export import export_model
from sener_jax.export import load_export_labels
from sener_jax.predict import make_logits_fn, predict_file
from sener_jax.pretrain import pretrain
from sener_jax.render import report_path_for, write_predictions_report

from sener_jax.run_setup import RunSetup, prepare_run, restore_best_trainable
from sener_jax.train import train_and_evaluate
from sener_jax.train_step import initial_params, replicate

logger = logging.getLogger(__name__)


def restore_best_params(run: RunSetup):
    """The full params of the run's best checkpoint (frozen weights re-read from their source)."""
    best = checkpointing.RunCheckpoints(run.workdir / "checkpoints" / "best")
    if best.latest_step() is None:
        raise FileNotFoundError(f"no best checkpoint under {best.directory}: train first (--mode=train)")
    config = run.config
    params = initial_params(config, run.model_config, jax.random.split(jax.random.PRNGKey(config.seed))[0],
                            training=False)
    trainable, frozen = optim.split_trainable(params, config.train.finetune)
    if jax.tree.leaves(frozen):
        source = config.model.pretrained or f"a random initialisation from seed {config.seed}, as in training"
        logger.info("frozen weights (not in the checkpoint; finetune=%r): %s", config.train.finetune, source)
    frozen = replicate(frozen, run.mesh)
    trainable = restore_best_trainable(best, run, trainable)
    best.close()
    return optim.merge_params(trainable, frozen)


def evaluate_checkpoint(config, workdir) -> dict:
    run = prepare_run(config, workdir)
    params = restore_best_params(run)
    return evaluate_and_write(run, make_logits_fn(run.model_config, run.mesh), params)


def export_checkpoint(config, workdir) -> pathlib.Path:
    run = prepare_run(config, workdir)
    params = restore_best_params(run)
    # Our own WORKDIR/export, rewritten from the best checkpoint: replace it.
    return export_model(run.workdir / "export", run.model_config, params, run.data.tokenizer, run.data.labels,
                        run.settings, overwrite=True)


def predict_mode(config, workdir) -> tuple[int, pathlib.Path, pathlib.Path]:
    """Predictions (JSON lines, header naming input and export) and an HTML report beside them.

    Every check (paths, batch size, resume) runs before the first prediction. Returns
    (records written, predictions path, report path).
    """
    predict = config.predict
    export_dir = predict.export_dir or str(pathlib.Path(workdir) / "export")
    output = pathlib.Path(predict.output or pathlib.Path(workdir) / "predictions.jsonl")
    report = report_path_for(output)
    written = predict_file(export_dir, predict.input, output, batch_size=predict.batch_size,
                           overwrite=bool(predict.get("overwrite", False)), report_path=report)
    print(f"wrote {written} predictions to {output}")
    write_predictions_report(predict.input, output, report, labels=load_export_labels(export_dir))
    print(f"wrote an HTML report to {report}")
    return written, output, report


def stats_mode(config, workdir) -> None:
    data = load_data(config, workdir)
    print(coverage_report(data.splits, data.tokenizer, config.model.head.max_span_words - 1, config.data.max_tokens,
                          config.data.overlap_words, original=True))


def run_mode(mode: str, config, workdir) -> None:
    """Dispatch for main.py."""
    if mode == "train":
        train_and_evaluate(config, workdir)
    elif mode == "eval":
        evaluate_checkpoint(config, workdir)
    elif mode == "export":
        print(export_checkpoint(config, workdir))
    elif mode == "predict":
        predict_mode(config, workdir)
    elif mode == "pretrain":
        pretrain(config, workdir)
    elif mode == "stats":
        stats_mode(config, workdir)
    else:
        raise ValueError(f"unknown mode {mode!r}")
