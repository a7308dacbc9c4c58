"""After the first epoch a run compiles no program over arrays: fixed shapes per bucket (batches,
label spans, decoding candidates). Compiles are read from jax_log_compiles; eager scalar arithmetic
(the learning-rate schedule evaluated for the log line, all arguments 0-d) is not counted."""
import logging
import re

import jax

from configs import demo
from sener_jax import train


class _Compiles(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.events: list = []

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("Compiling "):
            shapes = re.findall(r"ShapedArray\(\w+\[([^\]]*)\]", message)
            if any(shapes):  # some argument is not a scalar
                self.events.append(message.split(" with ")[0])


def test_second_epoch_compiles_nothing(tmp_path, monkeypatch):
    config = demo.get_config("tiny")
    config.train.num_epochs, config.train.max_steps = 2, 0
    config.train.compilation_cache_dir = ""
    config.train.export = False
    config.eval.threshold = 0.2
    handler, report = _Compiles(), train.EpochTimer.report

    def mark(self, epoch, writer, step):
        report(self, epoch, writer, step)
        handler.events.append(("epoch_end", epoch))

    monkeypatch.setattr(train.EpochTimer, "report", mark)
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles(True):
            train.train_and_evaluate(config, tmp_path)
    finally:
        logger.removeHandler(handler)
    ends = [i for i, e in enumerate(handler.events) if isinstance(e, tuple)]
    assert len(ends) == 2, handler.events
    first, second = handler.events[: ends[0]], handler.events[ends[0] + 1 : ends[1]]
    assert any("step" in name for name in first)  # the training step compiled in epoch 1 and was seen
    assert second == [], f"compiled during the second epoch (train + eval + checkpoint): {second}"
