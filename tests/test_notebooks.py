"""The notebooks: committed without outputs, and both run top to bottom in their CI setting.

SENER_NOTEBOOK_TINY=1 puts them in their smallest setting (the demo's tiny config, 2 training
steps; two ablation variants, two short lengths, the analytic memory predictor). The kernel gets
one CPU device and XLA's backend optimisation level 0: compiling dominates these runs and the
level does not change what they compute (and not XLA's buffer assignment, which the memory
numbers come from).
"""
import importlib.util
import json
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("quickstart.ipynb", "ablations.ipynb")


def all_notebooks():
    found = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert {p.name for p in found} >= set(NAMES), f"missing notebooks in {NOTEBOOKS}: {NAMES}"
    return found


def test_committed_notebooks_have_no_outputs():
    for path in all_notebooks():
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, (
                    f"{path.name} cell {index} has outputs: strip them (jupyter nbconvert --clear-output --inplace)"
                )
        assert "widgets" not in notebook.metadata, f"{path.name}: widget state in the metadata"


def test_notebooks_have_a_parameters_cell_first_among_code_cells():
    for path in all_notebooks():
        notebook = nbformat.read(path, as_version=4)
        first_code = next(c for c in notebook.cells if c.cell_type == "code")
        assert first_code.source.startswith("# Parameters"), path.name


def outputs_text(notebook) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                parts.append(output.text)
            elif output.output_type in ("display_data", "execute_result"):
                parts.extend(str(v) for k, v in output.data.items() if k.startswith("text/"))
                parts.extend(f"<{k} output>" for k in output.data if k.startswith("image/"))
    return "\n".join(parts)


@pytest.fixture
def notebook_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SENER_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("SENER_NOTEBOOK_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend: plots become outputs
    return tmp_path / "work"


def execute(name: str):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError naming the cell when one fails
    return notebook


def test_quickstart_runs_and_renders_entities(notebook_env):
    notebook = execute("quickstart.ipynb")
    text = outputs_text(notebook)
    assert 'class="sener-doc"' in text and 'class="sener-legend"' in text
    assert "micro" in text and "== dev ==" in text
    assert (notebook_env / "export" / "model.json").is_file()


def test_ablations_run_and_report_f1_and_memory(notebook_env):
    notebook = execute("ablations.ipynb")
    text = outputs_text(notebook)
    assert "TINY CPU RUN" in text and "| SeNER |" in text and "| w/o arrow (full attention) |" in text
    if importlib.util.find_spec("matplotlib") is not None:
        assert "<image/png output>" in text, "the plot cell drew nothing"
    else:
        assert "matplotlib is not installed" in text
    f1 = json.loads((notebook_env / "ablation_f1.json").read_text())
    assert set(f1) == {"SeNER", "w/o arrow (full attention)"} and all(0 <= r["f1"] <= 1 for r in f1.values())
    memory = json.loads((notebook_env / "ablation_memory.json").read_text())
    assert {(r["variant"], r["n_tokens"]) for r in memory} == {
        (v, n) for v in ("SeNER", "w/o arrow (full attention)") for n in (128, 256)
    }
    for row in memory:  # a length after one over the budget is not measured
        assert (row["peak_bytes"] or 0) > 0 or (row["over_budget"] and row["n_tokens"] > 128)
