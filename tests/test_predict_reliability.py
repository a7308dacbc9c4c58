"""Faults around exports and `--mode=predict`, on an export of a randomly initialised tiny model:
corrupted or incomplete exports, hand-edited model.json, foreign output directories, prediction
files of another input/export, outputs that are not ours, input == output, bad batch sizes and
texts that are not valid Unicode."""
from __future__ import annotations

import json
import pathlib
import shutil

import jax
import pytest

from configs import demo
from sener_jax.data import load_tokenizer
from sener_jax.run_setup import inference_settings
from sener_jax.train_step import model_config_from
from sener_jax.export import export_model, load_export
from sener_jax.manifest import ManifestError, write_manifest
from sener_jax.models.sener import init_params
from sener_jax.modes import predict_mode as run_predict_mode
from sener_jax.predict import Extractor, predict_file
from sener_jax.prediction_io import PredictionFileError, read_header, read_predictions
from sener_jax.render import REPORT_MARKER, report_path_for
from tests.test_manifest import flip_bytes

LABELS = ["name", "organization"]
TEXTS = ["Ulric Brandt works at Norvale Institute of Technology.", "Phone: +27 (428) 891-6513", "Alice at ACME."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    config = demo.get_config("tiny")
    tokenizer = load_tokenizer("synthetic")
    model_config = model_config_from(config, tokenizer.vocab_size, len(LABELS))
    params = init_params(model_config, jax.random.PRNGKey(0))
    settings = inference_settings(config)
    export_model(root / "export", model_config, params, tokenizer, LABELS, settings)
    return dict(root=root, export=root / "export", model_config=model_config, params=params, tokenizer=tokenizer,
                settings=settings, config=config)


def _copy_export(tiny, tmp_path) -> pathlib.Path:
    target = tmp_path / "export"
    shutil.copytree(tiny["export"], target)
    return target


def _inputs(path, texts, ids=True):
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t} if ids else {"text": t}) + "\n"
                            for i, t in enumerate(texts)))
    return path


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()[1:]]


# ---------------------------------------------------------------------------------------------
# Exports (items 3, 6, 7)
# ---------------------------------------------------------------------------------------------


def test_flipped_bytes_and_incomplete_exports_are_refused_naming_the_file(tiny, tmp_path):
    export = _copy_export(tiny, tmp_path)
    assert load_export(export).labels == LABELS
    params_files = sorted(p for p in (export / "params").rglob("*") if p.is_file())
    victim = max(params_files, key=lambda p: p.stat().st_size)  # the array data
    flip_bytes(victim, 16, offset=victim.stat().st_size // 2)
    with pytest.raises(ManifestError, match=f"{victim.name}: sha256 differs"):
        load_export(export)
    with pytest.raises(ManifestError):
        Extractor.load(export)
    (export / "MANIFEST.json").unlink()  # as a killed export (or an old one) leaves it
    with pytest.raises(ManifestError, match="incomplete or foreign directory: MANIFEST.json is missing"):
        load_export(export)


def _edit_model_json(export, edit):
    meta = json.loads((export / "model.json").read_text())
    edit(meta)
    (export / "model.json").write_text(json.dumps(meta))
    write_manifest(export, kind="export")  # as `python -m sener_jax.manifest --write` after a hand edit


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(labels=["name"]), r"field 'labels' has 1 labels but model.head.num_types is 2"),
    (lambda m: m.update(labels=["name", "name"]), "names a label twice"),
    (lambda m: (m["model"]["head"].update(num_types=3), m.update(labels=["a", "b", "c"])),
     r"params: array head/\S+ has shape .* implies"),
    (lambda m: m["model"]["head"].update(colour=1), r"field 'model'.*colour"),
    (lambda m: m["inference"].update(threshold="high"), r"inference.threshold = 'high', expected a number in \[0, 1\]"),
    (lambda m: m["inference"].update(max_tokens=0), r"inference.max_tokens = 0"),
    (lambda m: m["inference"].update(stride=3), r"inference: unknown field\(s\) \['stride'\]"),
])
def test_hand_edited_model_json_fails_on_load_naming_file_and_field(tiny, tmp_path, edit, message):
    export = _copy_export(tiny, tmp_path)
    _edit_model_json(export, edit)
    with pytest.raises(ValueError, match=message) as error:
        load_export(export)
    assert "model.json" in str(error.value) or "params" in str(error.value)


def test_export_model_never_deletes_a_foreign_directory_or_tmp_neighbour(tiny, tmp_path):
    args = (tiny["model_config"], tiny["params"], tiny["tokenizer"], LABELS, tiny["settings"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    (tmp_path / "out.tmp").mkdir()
    (tmp_path / "out.tmp" / "keep").write_text("precious")
    with pytest.raises(FileExistsError, match="not a sener_jax export"):
        export_model(out, *args, overwrite=True)
    assert (out / "thesis.tex").read_text() == "precious"
    (out / "thesis.tex").unlink()
    export_model(out, *args, overwrite=False)
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        export_model(out, *args, overwrite=False)
    (out / "stale").write_text("from the old export")
    export_model(out, *args, overwrite=True)
    assert load_export(out).labels == LABELS and not (out / "stale").exists()  # replaced as a whole
    assert (tmp_path / "out.tmp" / "keep").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.tmp"]  # no staging left behind


# ---------------------------------------------------------------------------------------------
# Prediction files (item 4)
# ---------------------------------------------------------------------------------------------


def test_another_input_or_export_is_not_resumed_into_the_same_output(tiny, tmp_path):
    output = tmp_path / "out.jsonl"
    first = _inputs(tmp_path / "first.jsonl", TEXTS[:2], ids=False)
    second = _inputs(tmp_path / "second.jsonl", ["Bob Stone, ACME.", "Carol at Kestrin College."], ids=False)
    assert predict_file(tiny["export"], first, output, batch_size=2) == 2
    header = read_header(output)
    assert header["input"]["path"] == str(first.resolve()) and len(header["export"]["manifest_sha256"]) == 64
    with pytest.raises(PredictionFileError, match="was written for input .*first.jsonl"):
        predict_file(tiny["export"], second, output, batch_size=2)
    other_export = _copy_export(tiny, tmp_path)
    _edit_model_json(other_export, lambda m: m["inference"].update(threshold=0.25))
    with pytest.raises(PredictionFileError, match="was written with another export"):
        predict_file(other_export, first, output, batch_size=2)
    # overwrite starts the file over with the second input: its entities, not the first file's.
    assert predict_file(tiny["export"], second, output, batch_size=2, overwrite=True) == 2
    records = _records(output)
    assert [r["id"] for r in records] == ["1", "2"]
    for record, text in zip(records, ["Bob Stone, ACME.", "Carol at Kestrin College."]):
        assert all(text[e["start"]:e["end"]] == e["text"] for e in record["entities"])
    assert read_header(output)["input"]["path"] == str(second.resolve())


def test_resume_continues_a_grown_input_and_cuts_a_torn_line(tiny, tmp_path):
    source = _inputs(tmp_path / "in.jsonl", TEXTS[:2])
    output = tmp_path / "out.jsonl"
    assert predict_file(tiny["export"], source, output, batch_size=1) == 2
    assert predict_file(tiny["export"], source, output, batch_size=1) == 0  # all done
    with open(source, "a") as handle:
        handle.write(json.dumps({"id": "d2", "text": TEXTS[2]}) + "\n")
    with open(output, "a") as handle:
        handle.write('{"id": "d2", "entit')  # a kill in the middle of a line
    assert predict_file(tiny["export"], source, output, batch_size=1) == 1
    assert [r["id"] for r in _records(output)] == ["d0", "d1", "d2"]
    source.write_text(source.read_text().replace('"d1"', '"dX"'))  # the input changed
    with pytest.raises(PredictionFileError, match="not that input"):
        predict_file(tiny["export"], source, output, batch_size=1)


def test_outputs_that_are_not_ours_are_never_truncated_or_replaced(tiny, tmp_path):
    source = _inputs(tmp_path / "in.jsonl", TEXTS[:1])
    notes = tmp_path / "notes.csv"
    notes.write_text("a,b\n1,2\n")
    with pytest.raises(FileExistsError, match="not a sener_jax predictions file"):
        predict_file(tiny["export"], source, notes, overwrite=True)
    assert notes.read_text() == "a,b\n1,2\n"
    # An output ending in .html gets its report beside it, never over it.
    assert report_path_for(tmp_path / "p.html") == tmp_path / "p.report.html"
    assert report_path_for(tmp_path / "p.jsonl") == tmp_path / "p.html"
    # An existing page that is not our report is refused before anything is predicted.
    page = tmp_path / "p.html"
    page.write_text("<html>my page</html>")
    config = tiny["config"].copy_and_resolve_references()
    config.predict.input, config.predict.output = str(source), str(tmp_path / "p.jsonl")
    config.predict.export_dir = str(tiny["export"])
    with pytest.raises(FileExistsError, match="not a sener_jax predictions report"):
        run_predict_mode(config, tmp_path)
    assert page.read_text() == "<html>my page</html>" and not (tmp_path / "p.jsonl").exists()
    page.unlink()
    _, output, report = run_predict_mode(config, tmp_path)
    assert REPORT_MARKER in report.read_text() and read_header(output) is not None
    config.predict.overwrite = True
    run_predict_mode(config, tmp_path)  # our own report and predictions are replaced
    config.predict.output = str(tmp_path / "q.html")
    _, output, report = run_predict_mode(config, tmp_path)
    assert report == tmp_path / "q.report.html" and read_header(output) is not None and REPORT_MARKER in report.read_text()


def test_input_as_output_and_bad_batch_sizes_are_named(tiny, tmp_path):
    source = _inputs(tmp_path / "in.jsonl", TEXTS[:1])
    before = source.read_text()
    with pytest.raises(ValueError, match="is the input file itself"):
        predict_file(tiny["export"], source, source)
    (tmp_path / "link.jsonl").hardlink_to(source)
    with pytest.raises(ValueError, match="is the input file itself"):
        predict_file(tiny["export"], source, tmp_path / "link.jsonl")
    assert source.read_text() == before
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"predict.batch_size must be an int >= 1"):
            predict_file(tiny["export"], source, tmp_path / "out.jsonl", batch_size=bad)
    assert not (tmp_path / "out.jsonl").exists()


def test_a_lone_surrogate_is_a_per_document_error_and_the_rest_is_processed(tiny, tmp_path):
    source = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": "a", "text": TEXTS[0]}), '{"id": "bad", "text": "Bob \\ud800 Stone"}',
             '{"id": "\\udc80", "text": "odd id"}', json.dumps({"id": "c", "text": TEXTS[2]})]
    source.write_text("\n".join(lines) + "\n")
    output = tmp_path / "out.jsonl"
    assert predict_file(tiny["export"], source, output, batch_size=4) == 4
    records = {r["id"]: r for r in _records(output)}
    assert set(records) == {"a", "bad", "\udc80", "c"}
    assert "not valid Unicode" in records["bad"]["error"] and records["bad"]["entities"] == []
    assert "error" not in records["a"] and "error" not in records["c"]
    assert read_predictions(output)["c"] == records["c"]["entities"]
