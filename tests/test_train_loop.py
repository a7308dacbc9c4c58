"""End to end: tiny configs train and evaluate, kill-and-resume, checkpoint errors, export -> Extractor."""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import dataclasses

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from configs import demo, profiling07, scholarxl, scirex
from sener_jax import checkpointing, convert, modes, train, train_step
from sener_jax.manifest import MANIFEST_NAME
from sener_jax.data import load_data
from sener_jax.models.sener import init_params
from sener_jax.run_setup import prepare_run
from sener_jax.data import word_span_to_chars
from sener_jax.models.lora import is_lora_path
from sener_jax.evaluate import evaluate_split
from sener_jax.export import load_export
from sener_jax.predict import Extractor, make_logits_fn, predict_documents, predict_file

REPO = pathlib.Path(__file__).resolve().parents[1]
# The kill-and-resume test reruns exactly this configuration as a subprocess.
DEMO_FLAGS = ["--config.train.max_steps=4", "--config.train.checkpoint_every_steps=1", "--config.eval.threshold=0.2"]


def demo_tiny_config():
    config = demo.get_config("tiny")
    config.train.max_steps = 4
    config.train.checkpoint_every_steps = 1
    config.eval.threshold = 0.2  # a barely trained model: a low threshold so that spans come out
    return config


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    config = demo_tiny_config()
    results = train.train_and_evaluate(config, workdir)
    return config, workdir, results


def latest_trainable(workdir: pathlib.Path) -> dict:
    manager = ocp.CheckpointManager(workdir / "checkpoints" / "latest")
    step = manager.latest_step()
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    return step, traverse_util.flatten_dict(jax.device_get(restored["state"]["trainable"]))


def test_demo_tiny_trains_evaluates_and_exports(demo_run):
    config, workdir, results = demo_run
    saved = json.loads((workdir / "eval_dev.json").read_text())
    assert saved["micro"] == results["dev"]["micro"] and set(saved["per_type"]) <= set(demo.get_config().data.synthetic.keys()) | set(saved["per_type"])
    assert saved["micro"]["gold"] > 0 and saved["documents"] == 2
    assert (workdir / "eval_test.json").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in (workdir / "tensorboard").iterdir())
    meta = json.loads((workdir / "export" / "model.json").read_text())
    assert meta["labels"] and meta["model"]["encoder"]["lora_rank"] == 0
    step, _ = latest_trainable(workdir)
    assert step == 4


def test_export_round_trip_matches_training_evaluation(demo_run):
    config, workdir, _ = demo_run
    run = prepare_run(config, workdir)
    documents = run.data.splits["dev"]
    params = modes.restore_best_params(run)
    in_training = predict_documents(
        make_logits_fn(run.model_config, run.mesh), params, documents, run.data.tokenizer, run.data.labels,
        run.settings, window=run.model_config.head.band_half_width, batch_size=config.eval.batch_size,
    )
    extractor = Extractor.load(workdir / "export")
    extracted = extractor.extract([d.text for d in documents], batch_size=4)
    n_spans = 0
    for doc, entities in zip(documents, extracted):
        expected = sorted((*word_span_to_chars(doc, s, e), label) for s, e, label, _ in in_training[doc.doc_id])
        got = sorted((e["start"], e["end"], e["label"]) for e in entities)
        assert got == expected, doc.doc_id
        for entity in entities:
            assert doc.text[entity["start"] : entity["end"]] == entity["text"]
        n_spans += len(entities)
    assert n_spans > 0, "the round trip compared no spans: lower eval.threshold in demo_tiny_config"


def test_eval_mode_reproduces_the_training_evaluation(demo_run, capsys):
    config, workdir, results = demo_run
    again = modes.evaluate_checkpoint(config, workdir)
    assert again["dev"]["micro"] == results["dev"]["micro"]
    assert "micro" in capsys.readouterr().out  # the per-type table is printed


def test_extract_input_errors_and_empty_text(demo_run):
    _, workdir, _ = demo_run
    extractor = Extractor.load(workdir / "export")
    assert extractor.extract("") == [] and extractor.extract(["", "   "]) == [[], []]
    with pytest.raises(TypeError, match="item 1 is a int"):
        extractor.extract(["fine", 3])


def test_predict_mode_writes_in_order_and_skips_done_ids(demo_run, tmp_path):
    _, workdir, _ = demo_run
    texts = ["Dr. Alice Smith, Ph.D. in Physics, 2004.", "", "Prof. Bob Jones works at Kestrin College since 2005."]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    output = tmp_path / "out.jsonl"
    assert predict_file(workdir / "export", source, output, batch_size=2) == 3
    with open(source, "a") as handle:
        handle.write(json.dumps({"text": "Carol White"}) + "\n")  # no id: the line number
    assert predict_file(workdir / "export", source, output, batch_size=2) == 1
    lines = [json.loads(line) for line in output.read_text().splitlines()[1:]]  # after the header line
    assert [r["id"] for r in lines] == ["d0", "d1", "d2", "4"]
    assert lines[1]["entities"] == []
    for record, text in zip(lines, texts):
        for entity in record["entities"]:
            assert text[entity["start"] : entity["end"]] == entity["text"]


def test_kill_and_resume_reaches_the_uninterrupted_params(demo_run, tmp_path):
    _, reference_dir, _ = demo_run
    workdir = tmp_path / "killed"
    command = [sys.executable, "-m", "sener_jax.main", "--config=configs/demo.py:tiny", f"--workdir={workdir}", *DEMO_FLAGS]
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        # JAX_COMPILATION_CACHE_DIR is inherited (tests/conftest.py): both runs read back what the
        # in-process demo run compiled (the same program): saves minutes on CI.
    )
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = workdir / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        # A step counts once its manifest (the commit marker) is written: kill right after that.
        if latest.is_dir() and any(p.name.isdigit() and (p / MANIFEST_NAME).is_file() for p in latest.iterdir()):
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (workdir / "eval_dev.json").exists()
    killed_at, _ = latest_trainable(workdir)
    assert killed_at < 4
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed from" in rerun.stderr
    step, resumed = latest_trainable(workdir)
    _, reference = latest_trainable(reference_dir)
    assert step == 4 and resumed.keys() == reference.keys()
    for path in reference:
        np.testing.assert_allclose(resumed[path], reference[path], atol=1e-6, err_msg="/".join(path))


def test_incompatible_and_corrupt_checkpoints_are_clear_errors(demo_run, tmp_path):
    config, reference_dir, _ = demo_run
    workdir = tmp_path / "copy"
    shutil.copytree(reference_dir, workdir)
    other = demo_tiny_config()
    other.train.finetune = "head"
    with pytest.raises(checkpointing.IncompatibleCheckpointError, match="finetune"):
        train.train_and_evaluate(other, workdir)
    step_dir = workdir / "checkpoints" / "latest" / "4"
    for path in (step_dir / "state").rglob("*"):
        if path.is_file() and "manifest" in path.name:
            path.write_bytes(b"garbage")
    with pytest.raises(checkpointing.CorruptCheckpointError, match=str(step_dir)):
        train.train_and_evaluate(config, workdir)


@pytest.mark.parametrize("module, data_fields", [
    (scirex, {"single_file": ("scirex", "docs.jsonl.gz")}),
    (scholarxl, {"train_path": ("scholar-xl", "dev.json"), "dev_path": ("scholar-xl", "dev.json")}),
    (profiling07, {"train_path": ("profiling-07", "dev.json"), "dev_path": ("profiling-07", "dev.json")}),
])
def test_dataset_tiny_configs_train_and_evaluate(module, data_fields, shared_data, tmp_path):
    config = module.get_config("tiny")
    for field, parts in data_fields.items():
        config.data[field] = str(shared_data.joinpath(*parts))
    config.data.tokenizer = str(shared_data / "deberta-v3-tokenizer")
    config.train.export = False
    results = train.train_and_evaluate(config, tmp_path)
    dev = json.loads((tmp_path / "eval_dev.json").read_text())
    assert dev["micro"] == results["dev"]["micro"] and dev["documents"] == 2 and dev["micro"]["gold"] > 0
    assert set(dev["per_type"]) <= set(load_data(config, tmp_path).labels)


def test_pretrained_encoder_is_loaded_and_lora_stays_fresh(tmp_path):
    config = scirex.get_config("tiny")
    model_config = train_step.model_config_from(config, vocab_size=50, num_types=2)
    random_encoder = init_params(model_config, jax.random.PRNGKey(7))["encoder"]
    plain = {k: v for k, v in traverse_util.flatten_dict(random_encoder).items() if not is_lora_path(k)}
    convert.save_encoder(tmp_path / "enc", dataclasses.replace(model_config.encoder, lora_rank=0),
                         traverse_util.unflatten_dict(plain))
    config.model.pretrained = str(tmp_path / "enc")
    params = train_step.initial_params(config, model_config, jax.random.PRNGKey(0))
    loaded = traverse_util.flatten_dict(params["encoder"])
    for path, value in plain.items():
        np.testing.assert_array_equal(loaded[path], value)
    lora_b = [v for p, v in loaded.items() if p[-1] == "lora_b"]
    assert lora_b and all(np.all(np.asarray(v) == 0) for v in lora_b)


def test_threshold_sweep_runs_each_batch_once_and_matches_plain_evaluation(demo_run):
    """benchmarks/threshold_sweep.py decodes cached logits at several thresholds: each must equal a plain,
    uncached evaluation at that threshold, and the 0.2 column the training run's own dev F1."""
    import importlib.util
    config, workdir, results = demo_run
    spec = importlib.util.spec_from_file_location("threshold_sweep", REPO / "benchmarks" / "threshold_sweep.py")
    threshold_sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(threshold_sweep)
    exported = load_export(workdir / "export")
    documents = prepare_run(config, workdir).data.splits["dev"]
    thresholds = [0.1, 0.2, 0.6]
    swept = threshold_sweep.sweep(exported, {"dev": documents}, thresholds, batch_size=config.eval.batch_size)
    assert swept["f1"]["dev"][0.2] == results["dev"]["micro"]["f1"]
    base_fn, calls = make_logits_fn(exported.model_config), []

    def plain_fn(params, arrays):
        calls.append(1)
        return base_fn(params, arrays)

    for threshold in thresholds:
        plain = evaluate_split(plain_fn, exported.params, documents, exported.tokenizer, exported.labels,
                               dataclasses.replace(exported.settings, threshold=threshold), exported.model_config,
                               batch_size=config.eval.batch_size, split="dev")
        assert swept["f1"]["dev"][threshold] == plain["micro"]["f1"], threshold
    # one forward per batch for the whole grid, where the plain evaluations ran one per batch per threshold
    assert swept["forwards"]["dev"] * len(thresholds) == len(calls) > 0
    assert swept["dev_pick"]["threshold"] in thresholds
