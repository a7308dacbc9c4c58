"""`--mode=pretrain`: domain-adaptive masked-language-model training of the encoder on unlabelled
documents of any length, `pretrain(config, workdir) -> summary`.

The corpus (`config.pretrain.files`: paths or globs, JSON lines of any reader format or plain .txt)
is segmented exactly as for fine-tuning; whole words (or spans of them) are masked by the 80/10/10
rule; the encoder (same arrow attention and LogN as fine-tuning) plus DeBERTa's tied MLM head is
trained (`pretrain.objective="mlm"`), or, for "rtd", a small generator fills the masked words and
the encoder learns to detect the replaced tokens (DeBERTa-v3's objective, `models/rtd.py`; only the
encoder, the discriminator, is kept). WORKDIR/checkpoints/latest resumes a killed run exactly (state, iterator position, loss
curve); WORKDIR/tensorboard gets the loss and learning rate; the encoder alone (MLM head dropped)
is written to WORKDIR/encoder in `sener_jax.convert`'s format, for `model.pretrained`;
WORKDIR/pretrain_log.json holds the loss curve, a fixed-probe MLM loss before/after (RTD: the
generator's, plus the discriminator's loss and accuracy) and wall time.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time

import numpy as np
from tensorboardX import SummaryWriter
from tqdm.auto import tqdm

from sener_jax import checkpointing, distributed, optim
from sener_jax.convert import save_encoder
from sener_jax.data.batching import BatchIterator
from sener_jax.pretrain_step import (
    PretrainSetup,
    create_state,
    host_arrays,
    make_eval_loss,
    make_pretrain_step,
    optimizer_settings,
    prepare_pretraining,
    saved_encoder_params,
)
from sener_jax.train_step import abstract_replicated, replicate

logger = logging.getLogger(__name__)

ENCODER_DIR = "encoder"
LOG_FILE = "pretrain_log.json"
TRAIN_TAG, PROBE_TAG = 2, 3  # last element of the masking seeds


def probe_sums(setup: PretrainSetup, params, eval_fn) -> dict:
    """`make_eval_loss`'s sums over the first `pretrain.probe_batches` batches of an unshuffled pass
    with fixed masking (same batches and masks every call: the before/after comparison of a run)."""
    probe = BatchIterator(setup.iterator.segments, setup.config.pretrain.batch_size, setup.tokenizer.pad_id,
                          setup.iterator.token_buckets, setup.iterator.word_buckets, shuffle=False, num_epochs=1,
                          process_index=setup.iterator.process_index, process_count=setup.iterator.process_count)
    totals: dict = {}
    for index, batch in zip(range(setup.config.pretrain.probe_batches), probe):
        arrays = distributed.global_batch(host_arrays(setup, batch, (index, probe.process_index, PROBE_TAG)), setup.mesh)
        for name, value in eval_fn(params, arrays).items():
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def probe_losses(setup: PretrainSetup, params, eval_fn) -> dict:
    """{"mlm": mean MLM loss per predicted token (RTD: the generator's)} and, for RTD, "rtd" (the
    discriminator's mean loss per token) and "rtd_accuracy"."""
    sums = probe_sums(setup, params, eval_fn)
    losses = {"mlm": sums["mlm"] / max(sums["predicted"], 1.0)}
    if setup.objective.is_rtd:
        tokens = max(sums["tokens"], 1.0)
        losses.update(rtd=sums["rtd"] / tokens, rtd_accuracy=sums["correct"] / tokens)
    return losses


def _record(setup: PretrainSetup, curve: list, probe_before: dict) -> dict:
    return {"iterator": setup.iterator.state(), "curve": curve, "probe_before": probe_before,
            "fingerprint": setup.fingerprint}


def _restore(setup: PretrainSetup, latest: checkpointing.RunCheckpoints, state):
    """(state, loss curve, probe losses before training) from the latest checkpoint, or fresh."""
    step = latest.latest_step()
    if step is None:
        return state, [], None
    state, record = latest.restore(step, abstract_replicated(state, setup.mesh), setup.fingerprint)
    setup.iterator.restore(record["iterator"])
    logger.info("resumed pretraining from %s at step %d", latest.directory / str(step), step)
    before = record["probe_before"]
    # checkpoints written before RTD existed hold the MLM probe loss as a bare number
    return state, list(record["curve"]), before if isinstance(before, dict) else {"mlm": before}


LOGGED_TERMS = ("rtd_loss", "rtd_accuracy", "replaced")  # RTD's step metrics beside the loss


def _log(setup, writer, curve, window, step, started) -> None:
    """Appends [step, mean loss] to the curve (MLM: the MLM loss; RTD: the generator's MLM loss plus
    rtd_weight x the discriminator's) and logs the window's means."""
    means = {name: float(np.mean([float(m[name]) for m in window])) for name in window[0]}
    lr = optim.current_learning_rates(optimizer_settings(setup.config), setup.total_steps, step)["encoder"]
    curve.append([step, means["loss"]])
    writer.add_scalar("pretrain/loss" if setup.objective.is_rtd else "pretrain/mlm_loss", means["loss"], step)
    extra = ""
    if setup.objective.is_rtd:
        writer.add_scalar("pretrain/mlm_loss", means["mlm_loss"], step)
        for name in LOGGED_TERMS:
            writer.add_scalar(f"pretrain/{name}", means[name], step)
        extra = (f" (generator MLM {means['mlm_loss']:.4f}, RTD {means['rtd_loss']:.4f}, accuracy "
                 f"{means['rtd_accuracy']:.3f}, {means['replaced']:.2f} of predicted tokens replaced)")
    writer.add_scalar("pretrain/lr", lr, step)
    logger.info("pretrain step %d/%d: %s loss %.4f%s, lr %.3g, %.1f s", step, setup.total_steps,
                setup.objective.name.upper(), means["loss"], extra, lr, time.perf_counter() - started)


def pretrain(config, workdir) -> dict:
    """Runs (or resumes) pretraining, writes WORKDIR/encoder and WORKDIR/pretrain_log.json."""
    started = time.perf_counter()
    setup = prepare_pretraining(config, workdir)
    p = config.pretrain
    logger.info("pretraining on %d segments, %d devices, %d steps; encoder %d layers x %d hidden, vocab %d, "
                "MLM softmax over %s ids", len(setup.iterator.segments), setup.mesh.devices.size, setup.total_steps,
                setup.encoder.num_hidden_layers, setup.encoder.hidden_size, setup.encoder.vocab_size,
                "all" if setup.output_ids is None else f"the corpus's {len(setup.output_ids)}")
    state, optimizer = create_state(setup)
    state = replicate(state, setup.mesh)
    latest = checkpointing.RunCheckpoints(setup.workdir / "checkpoints" / "latest")
    state, curve, probe_before = _restore(setup, latest, state)
    eval_fn = make_eval_loss(setup.encoder, setup.mesh, setup.output_ids, setup.objective)
    if probe_before is None:
        probe_before = probe_losses(setup, state["params"], eval_fn)
    step_fn = make_pretrain_step(setup.encoder, optimizer, setup.mesh, output_ids=setup.output_ids,
                                 objective=setup.objective)
    writer = SummaryWriter(str(setup.workdir / "tensorboard")) if distributed.is_primary() else distributed.NullWriter()
    window = []
    first = int(state["step"]) + 1
    for step in tqdm(range(first, setup.total_steps + 1), initial=first - 1, total=setup.total_steps,
                     desc="pretrain", unit="step", disable=not distributed.is_primary()):
        batch = next(setup.iterator)
        it = setup.iterator.state()
        arrays = host_arrays(setup, batch, (it["epoch"], it["position"], setup.iterator.process_index, TRAIN_TAG))
        state, metrics = step_fn(state, distributed.global_batch(arrays, setup.mesh))
        window.append({k: v for k, v in metrics.items() if k in ("loss", "mlm_loss", *LOGGED_TERMS)})
        if step % p.log_every_steps == 0 or step == setup.total_steps:
            _log(setup, writer, curve, window, step, started)
            window = []
        if (p.checkpoint_every_steps and step % p.checkpoint_every_steps == 0) or step == setup.total_steps:
            latest.save(step, state, _record(setup, curve, probe_before))
    latest.close()
    probe_after = probe_losses(setup, state["params"], eval_fn)
    writer.add_scalar("pretrain/probe_loss", probe_after["mlm"], setup.total_steps)
    writer.close()
    summary = {"steps": setup.total_steps, "segments": len(setup.iterator.segments), "curve": curve,
               "objective": dataclasses.asdict(setup.objective),
               # the MLM probe loss (RTD: the generator's), then RTD's discriminator loss and accuracy
               "probe_loss_before": probe_before["mlm"], "probe_loss_after": probe_after["mlm"],
               **{f"probe_{name}_{when}": losses[name] for when, losses in (("before", probe_before), ("after", probe_after))
                  for name in losses if name != "mlm"},
               "wall_s": time.perf_counter() - started,
               "output_vocab": setup.encoder.vocab_size if setup.output_ids is None else int(len(setup.output_ids)),
               "encoder": str(setup.workdir / ENCODER_DIR)}
    if distributed.is_primary():
        encoder_params = distributed.replicated_to_host(saved_encoder_params(state["params"], setup.objective))
        save_encoder(setup.workdir / ENCODER_DIR, setup.encoder, encoder_params, overwrite=True)
        (setup.workdir / LOG_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    logger.info("pretraining done: probe MLM loss %.4f -> %.4f%s; encoder in %s", probe_before["mlm"], probe_after["mlm"],
                f", probe RTD loss {probe_before['rtd']:.4f} -> {probe_after['rtd']:.4f}" if setup.objective.is_rtd else "",
                summary["encoder"])
    return summary
