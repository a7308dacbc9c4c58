"""Training: `train_and_evaluate(config, workdir)`, one loop over the steps of a run.

The loop resumes exactly after a kill: WORKDIR/checkpoints/latest holds the train state plus a
record of the data-iterator position and the `LoopState` (early stopping, dev history), written at
every epoch end and every `train.checkpoint_every_steps`. Its pieces live elsewhere: the step and
the train state in `sener_jax.train_step`, the data in `sener_jax.data`, the run's setup in
`sener_jax.run_setup`, evaluation in `sener_jax.evaluate`, the other modes in `sener_jax.modes`.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from tensorboardX import SummaryWriter
from tqdm.auto import tqdm

from sener_jax import checkpointing, distributed, optim, train_guard
from sener_jax.compile_cache import enable_compilation_cache
from sener_jax.evaluate import eval_batch_size, evaluate_and_write, evaluate_split
from sener_jax.export import export_model
from sener_jax.models.sener import init_params
from sener_jax.epoch_timer import EpochTimer
from sener_jax.predict import make_logits_fn
from sener_jax.prefetch import Prefetcher
from sener_jax.run_setup import RunSetup, prepare_run, restore_best_trainable
from sener_jax.train_step import abstract_replicated, create_train_state, device_batch, make_train_step, replicate

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class LoopState:
    """What the loop carries across epochs besides the train state; saved in every checkpoint record
    under "loop" with the keys of the dict earlier versions wrote, so their checkpoints resume."""

    epochs_done: int = 0
    best_f1: float = -1.0
    best_step: int = -1
    bad_epochs: int = 0
    history: list = dataclasses.field(default_factory=list)  # one {"epoch", "step", "dev"} per evaluation
    stopped: bool = False  # early stopping triggered

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> "LoopState":
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [name for name in names if name not in record]
        if missing:
            raise checkpointing.CorruptCheckpointError(f"checkpoint record 'loop' lacks the fields {missing}: {record}")
        return cls(**{name: record[name] for name in names})


@dataclasses.dataclass
class LoopContext:
    """What the loop uses but never changes."""

    run: RunSetup
    frozen: Any
    logits_fn: Any
    writer: Any
    latest: checkpointing.RunCheckpoints
    best: checkpointing.RunCheckpoints
    groups: tuple[str, ...]  # the trained parameter groups, whose learning rates are logged


class LossWindow:
    """Losses (left on the device until logged) and tokens since the last log line."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.losses, self.tokens, self.start = [], 0, time.perf_counter()

    def add(self, loss, batch) -> None:
        self.losses.append(loss)
        self.tokens += int(batch.arrays["attention_mask"].sum())


def checkpoint_record(run: RunSetup, loop: LoopState) -> dict:
    return {"iterator": run.train_iterator.state(), "loop": loop.to_dict(), "fingerprint": run.fingerprint,
            "schedule": run.schedule_record}


def restore_latest(run: RunSetup, latest: checkpointing.RunCheckpoints, state) -> tuple[Any, LoopState]:
    """(state, loop) from the latest checkpoint, the iterator moved to its position; `state` as is
    (and a fresh loop) when there is none."""
    step = latest.latest_step()
    if step is None:
        return state, LoopState()
    state, record = latest.restore(step, abstract_replicated(state, run.mesh), run.fingerprint)
    run.train_iterator.restore(record["iterator"])
    logger.info("resumed from %s at step %d (iterator %s)", latest.directory / str(step), step, record["iterator"])
    saved_updates = record.get("schedule", {}).get("total_updates")
    if saved_updates is not None and saved_updates != run.total_updates:
        # The optimizer's schedules take their length at construction: from here on the learning
        # rates follow the new length, at the saved update count.
        logger.warning("the learning-rate schedule length changed from %d to %d updates (train.num_epochs / "
                       "max_steps); it continues from update %d", saved_updates, run.total_updates,
                       step // run.config.train.grad_accum_steps)
    return state, LoopState.from_dict(record["loop"])


def log_progress(ctx: LoopContext, window: LossWindow, step: int, bar) -> None:
    tconf = ctx.run.config.train
    loss = np.mean([float(x) for x in window.losses])
    tokens_per_s = window.tokens / max(time.perf_counter() - window.start, 1e-9)
    rates = optim.current_learning_rates(tconf, ctx.run.total_updates, step // tconf.grad_accum_steps,
                                         num_layers=ctx.run.config.model.encoder.num_hidden_layers)
    # under layer_lr_decay, "encoder" is the top layer's rate and the embeddings' one is logged beside it
    groups = ctx.groups + (("encoder_embeddings",) if "encoder" in ctx.groups and "encoder_embeddings" in rates else ())
    ctx.writer.add_scalar("train/loss", loss, step)
    ctx.writer.add_scalar("train/tokens_per_s", tokens_per_s, step)
    for group in groups:
        ctx.writer.add_scalar(f"train/lr_{group}", rates[group], step)
    shown = ", ".join(f"lr {g} {rates[g]:.3g}" for g in groups)
    logger.info("step %d: loss %.4f, %s, %.0f tokens/s", step, loss, shown, tokens_per_s)
    bar.set_postfix(loss=f"{loss:.4f}")
    window.reset()


def local_params(ctx: LoopContext, trainable):
    """Full params on this process's devices (multi-host: each process evaluates on its own)."""
    return distributed.to_local(optim.merge_params(trainable, ctx.frozen), distributed.local_mesh(ctx.run.mesh))


def end_of_epoch(ctx: LoopContext, loop: LoopState, state, epoch: int, step: int, timer=None) -> None:
    """Dev evaluation when due (best checkpoint, early stopping), then the latest checkpoint."""
    run, tconf = ctx.run, ctx.run.config.train
    check_health(ctx, state, step)  # before the dev F1 can mark it best, before it is saved
    timer = timer or EpochTimer()
    timer.phase("eval")
    loop.epochs_done = epoch + 1
    if "dev" in run.data.splits and (epoch + 1) % tconf.eval_every_epochs == 0:
        results = evaluate_split(
            ctx.logits_fn, local_params(ctx, state["trainable"]), run.data.splits["dev"], run.data.tokenizer,
            run.data.labels, run.settings, run.model_config, batch_size=eval_batch_size(run.config, "dev"), split="dev",
            max_buckets=run.config.data.get("max_buckets", 0),
        )
        micro = results["micro"]
        for key in ("precision", "recall", "f1"):
            ctx.writer.add_scalar(f"dev/{key}", micro[key], step)
        loop.history.append({"epoch": epoch + 1, "step": step, "dev": micro})
        logger.info("epoch %d: dev P %.4f R %.4f F1 %.4f", epoch + 1, micro["precision"], micro["recall"], micro["f1"])
        if micro["f1"] > loop.best_f1:
            loop.best_f1, loop.best_step, loop.bad_epochs = micro["f1"], step, 0
            ctx.best.save(step, {"trainable": state["trainable"]}, checkpoint_record(run, loop))
        else:
            loop.bad_epochs += 1
            if loop.bad_epochs >= tconf.patience:
                logger.info("early stopping: no dev-F1 gain for %d epochs", loop.bad_epochs)
                loop.stopped = True
    timer.phase("checkpoint")
    ctx.latest.save(step, state, checkpoint_record(run, loop))
    timer.report(epoch, ctx.writer, step)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
    """Trains (resuming from WORKDIR/checkpoints when present), evaluates, exports.

    Returns {"dev": results, "test": results} for the splits that exist (best checkpoint). Raises
    `train_guard.Preempted` after checkpointing on SIGTERM/SIGINT/SIGUSR1 and
    `train_guard.NonFiniteTrainingError` (nothing saved or exported) on NaN/inf steps.
    """
    enable_compilation_cache(config.train.get("compilation_cache_dir", ""))
    run = prepare_run(config, workdir)
    iterator, tconf = run.train_iterator, config.train
    if iterator is None:
        raise ValueError(f"data {config.data.name!r}: no training documents (set data.train_path or data.single_file)")
    logger.info("%d devices; %d train segments; %d steps (%d per epoch); labels %s",
                run.mesh.devices.size, len(iterator.segments), run.total_steps, len(iterator), run.data.labels)
    state, frozen, optimizer = create_train_state(config, run.model_config, run.total_updates,
                                                  jax.random.PRNGKey(config.seed))
    state, frozen = replicate(state, run.mesh), replicate(frozen, run.mesh)
    latest = checkpointing.RunCheckpoints(run.workdir / "checkpoints" / "latest")
    best = checkpointing.RunCheckpoints(run.workdir / "checkpoints" / "best")
    # Multi-host: every process evaluates on its own devices (same documents, same result); only
    # process 0 writes TensorBoard, evaluation files and the export.
    logits_fn = make_logits_fn(run.model_config, distributed.local_mesh(run.mesh))
    writer = SummaryWriter(str(run.workdir / "tensorboard")) if distributed.is_primary() else distributed.NullWriter()
    ctx = LoopContext(run, frozen, logits_fn, writer, latest, best, optim.trained_groups(state["trainable"], tconf.finetune))
    try:
        state, loop = restore_latest(run, latest, state)
        # After the restore: the prefetch thread starts from the resumed position (`Prefetcher.state()`
        # is what checkpoints record: the next batch to train on).
        run.train_iterator = Prefetcher(iterator, lambda b: device_batch(b, run.mesh), depth=2)
        with train_guard.StopSignals() as signals:
            state = run_steps(ctx, state, loop, make_train_step(run.model_config, optimizer, run.mesh,
                                                                 positive_weight=tconf.get("positive_weight", 1.0)), signals)
        run.train_iterator.close()
        writer.flush()
        results = evaluate_best_and_export(run, state["trainable"] if best.latest_step() is None else None, frozen,
                                           best, logits_fn)
        for split, res in results.items():
            writer.add_scalar(f"final_{split}/f1", res["micro"]["f1"], int(state["step"]))
    finally:
        if isinstance(run.train_iterator, Prefetcher):
            run.train_iterator.close()  # the prefetch thread, also after a stop or an error
        writer.close()
        latest.close()
        best.close()
    return results


def check_health(ctx: LoopContext, state, step: int) -> None:
    """The step's non-finite counters against train.nonfinite (a host read of 4 scalars: called only
    where the loop syncs anyway: logging, checkpoints, epoch ends)."""
    def hint() -> str:  # only on error: it lists the checkpoint directory
        saved = ctx.latest.latest_step()
        return f"the last good checkpoint is {ctx.latest.directory / str(saved)}" if saved is not None else "no checkpoint"

    train_guard.check_health(distributed.replicated_to_host(state["health"]), ctx.run.config.train, step, hint)


def stop_requested(ctx: LoopContext, signals: train_guard.StopSignals, step: int) -> bool:
    """Whether every process stops after `step`: one process checks its flag every step (free);
    several agree every train.signal_sync_every_steps steps (a small all-gather), so all stop at
    the same step even when the signal reached only some of them."""
    if jax.process_count() > 1 and step % max(1, ctx.run.config.train.get("signal_sync_every_steps", 10)):
        return False
    return distributed.any_process(signals.received is not None)


def run_steps(ctx: LoopContext, state, loop: LoopState, train_step, signals: train_guard.StopSignals):
    """The steps from the saved one to the last; returns the final state."""
    run, tconf, iterator, latest = ctx.run, ctx.run.config.train, ctx.run.train_iterator, ctx.latest
    steps_per_epoch = len(iterator)
    first_step = int(state["step"]) + 1
    if not loop.stopped and first_step <= run.total_steps and iterator.position >= steps_per_epoch:
        # Killed after an epoch's last batch but before its evaluation/checkpoint: end that epoch now.
        if loop.epochs_done <= iterator.epoch:
            end_of_epoch(ctx, loop, state, iterator.epoch, first_step - 1)
    window, bar, timer = LossWindow(), None, EpochTimer()
    for step in range(first_step, run.total_steps + 1):
        if loop.stopped:
            break
        if iterator.position >= steps_per_epoch:  # the previous epoch is over (and evaluated)
            iterator.restore({**iterator.state(), "epoch": iterator.epoch + 1, "position": 0})
        epoch = iterator.epoch
        if bar is None:
            bar = tqdm(total=steps_per_epoch, initial=iterator.position, desc=f"epoch {epoch + 1}/{tconf.num_epochs}",
                       unit="step", disable=not distributed.is_primary())
        batch, arrays = next(iterator)
        state, step_metrics = train_step(state, ctx.frozen, arrays)
        window.add(step_metrics["loss"], batch)
        timer.completed(step_metrics["loss"], bar)  # the bar counts finished steps (bounded lag)
        if step % tconf.log_every_steps == 0 or step == run.total_steps:
            log_progress(ctx, window, step, bar)
            check_health(ctx, state, step)
        epoch_over = iterator.position >= steps_per_epoch
        if tconf.checkpoint_every_steps and step % tconf.checkpoint_every_steps == 0 and not epoch_over:
            check_health(ctx, state, step)
            latest.save(step, state, checkpoint_record(run, loop))
        if epoch_over or step == run.total_steps:
            timer.drain(bar)
            bar.close()
            bar = None
            end_of_epoch(ctx, loop, state, epoch, step, timer)
        if stop_requested(ctx, signals, step):
            if latest.latest_step() != step:
                check_health(ctx, state, step)
                latest.save(step, state, checkpoint_record(run, loop))
            latest.wait()  # the asynchronous save finished and its manifest written before we stop
            ctx.writer.flush()
            raise train_guard.Preempted(signals.received or "a stop signal (on another process)", step,
                                        latest.directory / str(step))
    return state


def evaluate_best_and_export(run: RunSetup, trainable, frozen, best: checkpointing.RunCheckpoints, logits_fn) -> dict:
    """Evaluates the best params (`trainable`, or the best checkpoint's when None) on every eval
    split and writes the export."""
    config = run.config
    if trainable is None:
        like, _ = optim.split_trainable(
            jax.eval_shape(lambda: init_params(run.model_config, jax.random.PRNGKey(0))), config.train.finetune
        )
        trainable = restore_best_trainable(best, run, like)
    params = distributed.to_local(optim.merge_params(trainable, frozen), distributed.local_mesh(run.mesh))
    train_guard.require_finite(params, "to evaluate or export the final model")
    results = evaluate_and_write(run, logits_fn, params)
    if config.train.export and distributed.is_primary():
        # Our own WORKDIR/export, re-exported by every run in this workdir: replace it.
        path = export_model(run.workdir / "export", run.model_config, params, run.data.tokenizer, run.data.labels,
                            run.settings, overwrite=True)
        logger.info("exported the model to %s", path)
    return results
