"""Command line: `python -m sener_jax.main --config=configs/demo.py --workdir=/tmp/demo [--mode=...]`.

Modes: train (train, evaluate, export), eval (evaluate the best checkpoint), predict (JSON lines
through the exported model), export (write WORKDIR/export from the best checkpoint), stats (dataset
statistics and span coverage), config (print the resolved config and exit).
Any config value can be overridden: `--config.train.lr_head=1e-3`.
"""
from __future__ import annotations

import logging

from absl import app, flags
from ml_collections import config_flags

MODES = ("train", "eval", "predict", "export", "stats", "config")

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Config file (path[:variant]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, evaluation and the export.")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to do.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if _MODE.value == "config":
        print(config)
        return
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    # Our progress at INFO; libraries (Orbax logs every file it writes) stay at WARNING.
    logging.getLogger("sener_jax").setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)
    # Imported here so that `--mode=config` and `--help` stay fast.
    from sener_jax import train

    train.run_mode(_MODE.value, config, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
