"""Test setup: 8 fake CPU devices (must be set before jax is imported anywhere)."""
import os

# LLVM optimisation level 0 for the tests' compiles: the suite is dominated by compiling many small
# programs once each, and level 0 compiles them ~3x faster. What is compiled (the HLO, its fusions)
# is unchanged; only the machine code is less optimised, which costs the few tests that run a
# training loop some run time. Whole suite, 2-core machine: 1,363 s -> 1,015 s (benchmarks/RESULTS.md).
TEST_XLA_FLAGS = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", TEST_XLA_FLAGS)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

# One persistent compilation cache for the whole test session, shared by the xdist workers and the
# subprocesses the tests start (they inherit the environment): many tests compile the same programs
# (the tiny demo's train step, its evaluation, the encoder at a few shapes), and a compile on these
# 2-core machines costs seconds. It starts empty each session (a stale cache would hide compile cost
# from the suite's own timing) and is removed at the end by the process that made it. A cache set by
# the caller (JAX_COMPILATION_CACHE_DIR) is used as it is and kept.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="sener_jax_test_jax_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
    # Also the sub-second compiles: most of the suite's programs are small, and a hit is a file read.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def shared_data_dir() -> pathlib.Path | None:
    """The shared real-data folder, or None when SENER_SHARED_DATA is unset.

    When the variable is set (CI sets it), a missing folder is a failure, never a skip.
    """
    value = os.environ.get("SENER_SHARED_DATA")
    if not value:
        return None
    path = pathlib.Path(value)
    if not path.is_dir():
        pytest.fail(f"SENER_SHARED_DATA={value!r} is set but is not a directory")
    return path


@pytest.fixture
def shared_data() -> pathlib.Path:
    """Path to ../shared/data; skips only when SENER_SHARED_DATA is unset."""
    path = shared_data_dir()
    if path is None:
        default = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
        if default.is_dir():
            return default.resolve()
        pytest.skip("SENER_SHARED_DATA not set and ../shared/data not found")
    return path
