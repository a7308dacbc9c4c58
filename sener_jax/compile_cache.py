"""JAX's persistent compilation cache: a rerun (or a resumed run) reads its programs back from disk
instead of compiling them again (minutes for the large model on an accelerator)."""
from __future__ import annotations

import logging
import os
import pathlib

import jax

logger = logging.getLogger(__name__)


def enable_compilation_cache(directory: str) -> pathlib.Path | None:
    """Points JAX's persistent cache at `directory` (~ expanded, created); "" leaves it off. A cache
    directory already set (JAX_COMPILATION_CACHE_DIR, or by the caller) wins: tests and launchers pick theirs."""
    if jax.config.jax_compilation_cache_dir:
        return pathlib.Path(jax.config.jax_compilation_cache_dir)
    if not directory:
        return None
    path = pathlib.Path(os.path.expanduser(directory)).resolve()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    logger.info("persistent compilation cache: %s", path)
    return path
