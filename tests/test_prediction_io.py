"""The JSON-lines files of `--mode=predict`: id rules of the inputs, appending and reading
predictions, and resuming after a kill that tore the last line."""
from __future__ import annotations

import io
import json

import pytest

from sener_jax.prediction_io import (
    PredictionFileError,
    input_identity,
    input_mismatch,
    iter_inputs,
    make_header,
    prepare_output,
    read_header,
    read_inputs,
    read_predictions,
    text_error,
    write_predictions,
)


def test_inputs_default_ids_to_line_numbers_and_reject_duplicates_and_bad_lines(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n\n{"text": "y"}\n{"id": 7, "text": ""}\n')
    assert read_inputs(path) == [("a", "x"), ("3", "y"), ("7", "")]
    path.write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n')
    with pytest.raises(ValueError, match="in.jsonl:2: id 'a' occurs more than once"):
        read_inputs(path)
    path.write_text('{"text": "x"}\n{"text": 3}\n')
    with pytest.raises(ValueError, match=r"in.jsonl:2: expected an object with a string field 'text'"):
        read_inputs(path)
    path.write_text('{"text": "x"}\n{oops\n')
    with pytest.raises(ValueError, match=r"in.jsonl:2: not valid JSON"):
        read_inputs(path)


def test_written_predictions_read_back_and_a_torn_line_is_cut_on_resume(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "a", "text": "x"}\n')
    header = make_header(source, tmp_path / "export", "0" * 64)
    output = tmp_path / "out.jsonl"
    assert read_header(output) is None
    assert prepare_output(output, header, overwrite=False) == 0 and read_header(output) == header
    entities = [[{"start": 0, "end": 4, "label": "näme", "text": "Zoë", "score": 0.5}], []]
    with open(output, "a", encoding="utf-8") as handle:
        write_predictions(handle, ["a", "b"], entities)
    assert "Zoë" in output.read_text(encoding="utf-8")  # not \u-escaped
    assert read_predictions(output) == {"a": entities[0], "b": []}  # the header is skipped
    with open(output, "a", encoding="utf-8") as handle:
        handle.write('{"id": "c", "entit')  # a kill in the middle of a line
    assert prepare_output(output, header, overwrite=False) == 2
    assert [json.loads(line)["id"] for line in output.read_text().splitlines()[1:]] == ["a", "b"]
    output.write_text(output.read_text().rstrip("\n"))  # a kill right before the final newline: redone
    assert prepare_output(output, header, overwrite=False) == 1 and output.read_text().endswith("}\n")
    with pytest.raises(ValueError):
        write_predictions(io.StringIO(), ["a"], [])  # ids and entities must pair up
    lines = output.read_text().splitlines(keepends=True)
    output.write_text(lines[0] + '{"id": "a"}\n' + lines[1])
    with pytest.raises(PredictionFileError, match=r"out.jsonl:2: not a prediction record"):
        prepare_output(output, header, overwrite=False)
    with pytest.raises(ValueError, match=r"out.jsonl:2: expected \{'id', 'entities'\}"):
        read_predictions(output)
    assert prepare_output(output, header, overwrite=True) == 0 and output.read_text().count("\n") == 1


def test_input_identity_allows_appending_but_not_other_contents(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "x"}\n')
    recorded = input_identity(source)
    assert input_mismatch(recorded, source) is None
    with open(source, "a") as handle:
        handle.write('{"text": "y"}\n')
    assert input_mismatch(recorded, source) is None  # grown: a resume continues it
    source.write_text('{"text": "z"}\n{"text": "y"}\n')
    assert "differ" in input_mismatch(recorded, source)
    source.write_text("{}")
    assert "fewer" in input_mismatch(recorded, source)


def test_surrogates_never_stop_the_writer(tmp_path):
    handle = io.StringIO()
    write_predictions(handle, ["\udc80", "ok"], [[], []], ["text is not valid Unicode", None])
    lines = handle.getvalue().splitlines()
    lines[0].encode("utf-8")  # escaped, so encodable
    assert json.loads(lines[0]) == {"id": "\udc80", "entities": [], "error": "text is not valid Unicode"}
    assert text_error("fine") is None and "surrogates not allowed" in text_error("a\ud800")
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"id": "a", "text": "caf\xe9"}\n')  # Latin-1 bytes: not UTF-8
    [(line_no, item_id, text)] = list(iter_inputs(source))
    assert item_id == "a" and text_error(text) is not None
