"""Command line: `python -m sener_jax.main --config=configs/demo.py --workdir=/tmp/demo [--mode=...]`.

Modes: train (train, evaluate, export), pretrain (masked-LM training of the encoder on unlabelled
text, writes WORKDIR/encoder for model.pretrained; configs/pretrain.py), eval (evaluate the best checkpoint), predict (JSON lines
through the exported model), export (write WORKDIR/export from the best checkpoint), stats (dataset
statistics and span coverage), config (print the resolved config and exit), plan (predicted peak
memory per device for the config at several lengths, and the longest input that fits a budget;
no data, weights or workdir needed: `--plan_lengths=1024,5120 --plan_batch=2 --plan_budget_gib=80`).
Multi-host: see sener_jax/distributed.py (SENER_COORDINATOR / SENER_NUM_PROCESSES / SENER_PROCESS_ID
or SLURM) and launch/.
Any config value can be overridden: `--config.train.lr_head=1e-3`.
Exit status: 0 done; 1 error (NaN/inf training: the message names the step); 75 (EX_TEMPFAIL)
stopped by SIGTERM/SIGINT/SIGUSR1 after writing a checkpoint: rerun the same command to resume.
"""
from __future__ import annotations

import logging
import pathlib

from absl import app, flags
from ml_collections import config_flags

MODES = ("train", "eval", "predict", "export", "pretrain", "stats", "config", "plan")

# The default is found from the repository root, so `python -m sener_jax.main` works from any directory.
_DEFAULT_CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "demo.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Config file (path[:variant]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, evaluation and the export.")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to do.")
_PLAN_LENGTHS = flags.DEFINE_list("plan_lengths", ["1024", "2048", "5120"], "--mode=plan: token lengths.")
_PLAN_BATCH = flags.DEFINE_integer("plan_batch", 2, "--mode=plan: rows per device.")
_PLAN_BUDGET = flags.DEFINE_float("plan_budget_gib", 80.0, "--mode=plan: memory per device for the longest-input search (0: skip).")
_PLAN_METHODS = flags.DEFINE_list("plan_methods", ["analytic"], "--mode=plan: analytic and/or compiled (compiles per cell).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if _MODE.value == "config":
        print(config)
        return
    if _MODE.value == "plan":
        # Deferred like the import below: JAX and the model load only for a mode that needs them.
        from sener_jax import memory

        print(memory.plan_table(config, batch=_PLAN_BATCH.value, lengths=[int(n) for n in _PLAN_LENGTHS.value],
                                methods=tuple(_PLAN_METHODS.value), budget_gib=_PLAN_BUDGET.value))
        return
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    # Our progress at INFO; libraries (Orbax logs every file it writes) stay at WARNING.
    logging.getLogger("sener_jax").setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)
    # Imported here, after flag parsing, so that `--mode=config` and `--help` stay fast (no JAX import).
    from sener_jax import distributed, modes

    if distributed.initialize(config) and not distributed.is_primary():
        logging.getLogger("sener_jax").setLevel(logging.WARNING)  # progress is logged by process 0 only

    from sener_jax import train_guard

    try:
        modes.run_mode(_MODE.value, config, _WORKDIR.value)
    except train_guard.Preempted as stop:
        # A checkpoint of the current step is complete: rerunning the same command resumes exactly.
        logging.getLogger("sener_jax").warning("%s; exit status %d", stop, train_guard.EXIT_PREEMPTED)
        raise SystemExit(train_guard.EXIT_PREEMPTED) from None
    except (train_guard.NonFiniteTrainingError, train_guard.NonFiniteParamsError) as error:
        raise SystemExit(f"error: {error}") from None  # exit status 1, the message on stderr


if __name__ == "__main__":
    app.run(main)
