"""Test setup: 8 fake CPU devices (must be set before jax is imported anywhere)."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402


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
