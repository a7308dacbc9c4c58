"""benchmarks/gpu_train_step.py on CPU: the smoke mode writes a table row per point with sane numbers.

The GPU table itself needs a lent GPU; this checks the pipeline (the real train step compiled,
predicted, run and tabulated) so a device session does not spend its minutes on a script bug.
"""
import importlib.util
import pathlib
import time

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_train_step.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_train_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table_rows(path: pathlib.Path) -> list[list[str]]:
    lines = [line for line in path.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]  # without the header


def test_smoke_survives_an_oom_point_and_writes_a_row_per_point(bench, tmp_path, monkeypatch):
    # The first point's compile raises XLA's out-of-memory error (injected: one real compile keeps the
    # test fast); the run records it and goes on to the next point, which really compiles and runs.
    real_compile, calls = bench.train_step.compile_train_step, []

    def compile_or_oom(*args, **kwargs):
        calls.append(args[4]["input_ids"].shape)
        if len(calls) == 1:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 99.00GiB.")
        return real_compile(*args, **kwargs)

    monkeypatch.setattr(bench.train_step, "compile_train_step", compile_or_oom)
    out = tmp_path / "gpu_train_step.md"
    args = bench.parse_args(["--smoke", "--in-process", "--points", "128x1", "64x2", "--warmup", "1", "--steps", "2",
                             "--no-analytic", "--out", str(out)])
    oom, row = bench.run_all(args)
    assert calls == [(1, 128), (2, 64)]
    assert oom["status"].startswith("OOM in compile") and "step_s" not in oom
    assert row["status"] == "ok", row
    assert row["step_s"] > 0 and row["compile_s"] > 0
    assert row["tokens_per_s"] == pytest.approx(2 * 64 / row["step_s"])
    assert row["predicted_compiled_bytes"] > 0 and row["words"] == 64  # words_for(64): the 32-word base, rounded up
    assert row["model_flops"] > 0 and row["loss"] > 0
    assert row["mfu"] is None and row["device_peak_bytes"] is None  # CPU: no peak FLOPs, no memory stats
    table = _table_rows(out)
    assert [cells[:2] for cells in table] == [["128", "1"], ["64", "2"]]
    assert table[0][bench.COLUMNS.index("step (s)")] == "n/a"
    assert float(table[1][bench.COLUMNS.index("predicted compiled (GiB)")]) > 0
    assert float(table[1][bench.COLUMNS.index("step (s)")]) > 0


def test_crashed_and_skipped_points_are_rows_not_errors(bench, tmp_path):
    args = bench.parse_args(["--smoke", "--points", "64x1", "--out", str(tmp_path / "t.md")])
    crashed = bench._child(args, "64x1", deadline=time.time())  # the watchdog kills the child at once
    assert crashed["status"].startswith("crashed") and crashed["tokens"] == 64
    args.budget_s = 0.0
    rows = bench.run_all(args)
    assert [r["status"] for r in rows] == ["skipped (budget)"]
    assert _table_rows(tmp_path / "t.md")[0][3] == "skipped (budget)"


def test_peak_flops_by_device_kind(bench):
    assert bench.peak_flops("NVIDIA H200") == 989e12
    assert bench.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert bench.peak_flops("cpu") is None


def test_bad_point_is_a_clear_error(bench):
    with pytest.raises(SystemExit, match="TOKENSxBATCH"):
        bench.parse_args(["--points", "5120"])
