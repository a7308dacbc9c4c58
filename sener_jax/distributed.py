"""Multi-process runs through JAX's own distributed runtime (`jax.distributed`).

The same `python -m sener_jax.main ...` runs on one machine or many. `initialize()` (called by
main.py before any computation) joins the processes into one JAX runtime when something asks for it:

  1. explicit settings, from the environment or the config (`config.distributed`, when the config
     has that block; environment variables win):
       SENER_COORDINATOR    host:port of process 0's coordinator service (e.g. 10.0.0.1:12355)
       SENER_NUM_PROCESSES  number of processes in the job
       SENER_PROCESS_ID     this process's index, 0 .. SENER_NUM_PROCESSES-1
       SENER_LOCAL_DEVICES  optional: comma-separated local device ids this process owns (e.g. "0" for
                            one process per GPU); default: all devices the process sees
  2. SLURM: inside `srun` with more than one task (SLURM_NTASKS > 1), JAX's SLURM detection reads
     the coordinator (first node), process count/id and local GPU (SLURM_LOCALID) itself.
  3. otherwise: a single process, nothing to initialise.
SENER_DISTRIBUTED=0 turns all of this off (e.g. to run single-process inside a SLURM allocation).

On CPU, cross-process collectives go through gloo (`jax_cpu_collectives_implementation`), so K
local CPU processes with a loopback coordinator behave like K hosts (launch/local_cpu_processes.sh,
tests/test_distributed.py).

After initialisation `jax.devices()` lists the devices of every process: the training mesh spans all
of them, each process builds only its rows of a global batch (`BatchIterator.shard`) and
`global_batch` assembles the global array from those local rows.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

logger = logging.getLogger(__name__)

ENV_COORDINATOR = "SENER_COORDINATOR"
ENV_NUM_PROCESSES = "SENER_NUM_PROCESSES"
ENV_PROCESS_ID = "SENER_PROCESS_ID"
ENV_LOCAL_DEVICES = "SENER_LOCAL_DEVICES"
ENV_SWITCH = "SENER_DISTRIBUTED"
CPU_COLLECTIVES = "gloo"


@dataclasses.dataclass(frozen=True)
class Settings:
    """How this process joins the job. `coordinator is None` with `slurm=True`: JAX detects all."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None
    slurm: bool = False
    timeout_s: int = 300


def _int(value, name: str, origin: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{origin} {name}={value!r}: expected an integer") from None


def settings_from(config=None, environ: Mapping[str, str] | None = None) -> Settings | None:
    """The distributed settings the environment / config ask for, or None for a single process."""
    env = os.environ if environ is None else environ
    if env.get(ENV_SWITCH, "").strip().lower() in ("0", "false", "off", "no"):
        return None
    block = config.get("distributed", None) if config is not None and hasattr(config, "get") else None
    block = block or {}
    coordinator = env.get(ENV_COORDINATOR) or block.get("coordinator", "") or None
    timeout = _int(block.get("timeout_s", 300), "timeout_s", "config.distributed")
    if coordinator:
        origin = "environment" if env.get(ENV_COORDINATOR) else "config.distributed"
        raw_n = env.get(ENV_NUM_PROCESSES, block.get("num_processes"))
        raw_id = env.get(ENV_PROCESS_ID, block.get("process_id"))
        if raw_n in (None, "") or raw_id in (None, ""):
            raise ValueError(
                f"{origin}: a coordinator ({coordinator}) is set, so {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} "
                f"(or config.distributed.num_processes / process_id) must be set too"
            )
        n, pid = _int(raw_n, ENV_NUM_PROCESSES, origin), _int(raw_id, ENV_PROCESS_ID, origin)
        if n < 1 or not 0 <= pid < n:
            raise ValueError(f"{origin}: {ENV_PROCESS_ID}={pid} must be in [0, {ENV_NUM_PROCESSES}={n})")
        if ":" not in coordinator:
            raise ValueError(f"{origin}: {ENV_COORDINATOR}={coordinator!r}: expected host:port")
        local = env.get(ENV_LOCAL_DEVICES) or block.get("local_device_ids", "")
        local_ids = tuple(_int(x, ENV_LOCAL_DEVICES, origin) for x in str(local).split(",") if x.strip()) or None
        return Settings(coordinator, n, pid, local_ids, timeout_s=timeout)
    if "SLURM_JOB_ID" in env and _int(env.get("SLURM_NTASKS", "1"), "SLURM_NTASKS", "environment") > 1:
        return Settings(slurm=True, timeout_s=timeout)
    return None


def _on_cpu() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "") or str(jax.config.jax_platforms or "")
    return platforms.split(",")[0].strip() == "cpu"


def initialize(config=None) -> bool:
    """Joins the distributed job when asked to (see the module docstring); True when it did.

    Must run before any JAX computation; calling it again is a no-op.
    """
    settings = settings_from(config)
    if settings is None:
        return False
    if jax.distributed.is_initialized():
        return True
    if _on_cpu():
        # gloo is the default in current JAX; set it anyway so CPU processes never fall back to
        # "no cross-process collectives".
        jax.config.update("jax_cpu_collectives_implementation", CPU_COLLECTIVES)
    if settings.slurm:
        jax.distributed.initialize(initialization_timeout=settings.timeout_s)
    else:
        jax.distributed.initialize(
            coordinator_address=settings.coordinator,
            num_processes=settings.num_processes,
            process_id=settings.process_id,
            local_device_ids=list(settings.local_device_ids) if settings.local_device_ids else None,
            initialization_timeout=settings.timeout_s,
        )
    logger.info("joined the distributed runtime: process %d of %d, %d local / %d global devices",
                jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def is_primary() -> bool:
    """Process 0: the one that logs, writes TensorBoard/evaluation files and the export."""
    return jax.process_index() == 0


def process_shard() -> tuple[int, int]:
    """(process_index, process_count): which rows of each global batch this process loads."""
    return jax.process_index(), jax.process_count()


def global_batch(local_arrays: Mapping[str, np.ndarray], mesh: Mesh) -> dict:
    """This process's rows -> global arrays sharded along rows over `mesh` (all processes call it
    with their own, equally sized rows; the global batch is their concatenation in process order)."""
    sharding = NamedSharding(mesh, P("data"))
    if jax.process_count() == 1:
        return jax.device_put(dict(local_arrays), sharding)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_arrays.items()}


def replicated_to_host(tree):
    """Fully replicated global arrays -> numpy on every process (no cross-process transfer needed)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x, tree)


def local_mesh(mesh: Mesh) -> Mesh:
    """`mesh` for a single process; otherwise a mesh over this process's own devices, on which it can
    run computations alone (evaluation: every process evaluates the same documents, so all agree on
    the dev F1 that drives early stopping and best-checkpoint selection)."""
    if jax.process_count() == 1:
        return mesh
    return Mesh(np.asarray(jax.local_devices()), mesh.axis_names[:1])


def to_local(tree, mesh: Mesh):
    """Replicated global arrays -> the same values replicated on `local_mesh(...)` (identity for one process)."""
    if jax.process_count() == 1:
        return tree
    return jax.device_put(replicated_to_host(tree), NamedSharding(mesh, P()))


class NullWriter:
    """Stands in for the TensorBoard writer on processes other than 0."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def primary_first(fn):
    """fn() on process 0, then (after a barrier) on the others: for work that writes shared files
    the others then only read (e.g. generating the synthetic data into the shared workdir)."""
    if jax.process_count() == 1:
        return fn()
    from jax.experimental import multihost_utils

    result = fn() if is_primary() else None
    multihost_utils.sync_global_devices("sener_jax.primary_first")
    return result if is_primary() else fn()


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is true on at least one (a collective: every process must
    call it at the same point, e.g. the same step). One process: `flag` itself, no communication."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray([int(bool(flag))], np.int32))))
