"""The JSON-lines files of `--mode=predict`: id rules of the inputs, appending and reading
predictions, and resuming after a kill that tore the last line."""
from __future__ import annotations

import io
import json

import pytest

from sener_jax.prediction_io import done_ids, read_inputs, read_predictions, write_predictions


def test_inputs_default_ids_to_line_numbers_and_reject_duplicates_and_bad_lines(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n\n{"text": "y"}\n{"id": 7, "text": ""}\n')
    assert read_inputs(path) == [("a", "x"), ("3", "y"), ("7", "")]
    path.write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n')
    with pytest.raises(ValueError, match="id 'a' occurs more than once"):
        read_inputs(path)
    path.write_text('{"text": "x"}\n{"text": 3}\n')
    with pytest.raises(ValueError, match=r"in.jsonl:2: expected an object with a string field 'text'"):
        read_inputs(path)
    path.write_text('{"text": "x"}\n{oops\n')
    with pytest.raises(ValueError, match=r"in.jsonl:2: not valid JSON"):
        read_inputs(path)


def test_written_predictions_read_back_and_a_torn_line_is_cut_on_resume(tmp_path):
    output = tmp_path / "out.jsonl"
    assert done_ids(output) == set()
    entities = [[{"start": 0, "end": 4, "label": "näme", "text": "Zoë", "score": 0.5}], []]
    with open(output, "a", encoding="utf-8") as handle:
        write_predictions(handle, ["a", "b"], entities)
    assert "Zoë" in output.read_text(encoding="utf-8")  # not \u-escaped
    assert read_predictions(output) == {"a": entities[0], "b": []}
    with open(output, "a", encoding="utf-8") as handle:
        handle.write('{"id": "c", "entit')  # a kill in the middle of a line
    assert done_ids(output) == {"a", "b"}
    assert [json.loads(line)["id"] for line in output.read_text().splitlines()] == ["a", "b"]
    output.write_text(output.read_text().rstrip("\n"))  # a kill right before the final newline
    assert done_ids(output) == {"a", "b"} and output.read_text().endswith("}\n")
    with pytest.raises(ValueError):
        write_predictions(io.StringIO(), ["a"], [])  # ids and entities must pair up
    output.write_text('{"id": "a"}\n')
    with pytest.raises(ValueError, match=r"out.jsonl:1: expected \{'id', 'entities'\}"):
        read_predictions(output)
