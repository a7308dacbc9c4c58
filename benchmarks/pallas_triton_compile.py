"""Compile the Pallas banded-attention kernels' Triton IR for A100 (sm_80) / H100 (sm_90) without a GPU.

jax lowers each `pallas_call` to a Triton (`tt.`) module and, on jax <= 0.10, only serialises it
into the `__gpu$xla.gpu.triton` custom call; compiling it to PTX happens in XLA on a GPU. Here the
module is captured as text while jax lowers the function for CUDA (deviceless), then compiled with
the `triton` wheel (`triton.compile` on a .ttir file, the kernel's own num_warps / num_stages) and
`ptxas -v` from the wheel reports registers, spills and shared memory.

  python benchmarks/pallas_triton_compile.py            # table for N=4096 and 65,536 on sm80 / sm90

Needs `pip install triton` (CPU is enough). Used by tests/test_band_pallas_triton.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import pathlib
import re
import sys
import tempfile

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
COMPUTE_CAPABILITY = {"sm80": 80, "sm90": 90}
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # this checkout's sener_jax, not an installed one


@dataclasses.dataclass(frozen=True)
class KernelIR:
    name: str
    ttir: str
    num_warps: int
    num_stages: int


@dataclasses.dataclass(frozen=True)
class KernelReport:
    name: str
    target: str
    num_warps: int
    num_stages: int
    registers: int
    spill_stores: int
    spill_loads: int
    shared_bytes: int
    ptx_instructions: int


def lower_for_cuda(fn, *args):
    """jax.jit(fn) lowered for CUDA on a machine without a GPU.

    Newer jax resolves the lowering device from the context mesh, so an abstract CUDA device is put
    in place when this jax has one (feature detection, as jax's deviceless AOT tests do); the
    platform is also named explicitly, which is all older jax needs.
    """
    import jax

    sharding = jax.sharding
    context = contextlib.nullcontext()
    if hasattr(sharding, "AbstractDevice") and hasattr(sharding, "use_abstract_mesh"):
        device = sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="cuda")
        context = sharding.use_abstract_mesh(sharding.AbstractMesh((1,), ("x",), abstract_device=device))
    with context:
        return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))


def capture_triton_kernels(fn, *args, compute_capability: int) -> list[KernelIR]:
    """Triton IR (text) of every pallas_call in jit(fn)(*args), lowered for `compute_capability`."""
    from jax._src.pallas.triton import pallas_call_registration as registration

    captured = []
    original = registration.lowering.lower_jaxpr_to_triton_module

    def capture(jaxpr, grid_mapping, platform, _compute_capability, *rest, **kwargs):
        result = original(jaxpr, grid_mapping, platform, compute_capability, *rest, **kwargs)
        # num_warps / num_stages are locals of jax's lowering rule (the caller) at this point.
        caller = sys._getframe(1).f_locals
        module = result.module.operation
        name = str(module.attributes["sym_name"]).strip('"')
        captured.append(KernelIR(name, module.get_asm(enable_debug_info=False), int(caller["num_warps"]),
                                 int(caller["num_stages"])))
        return result

    registration.lowering.lower_jaxpr_to_triton_module = capture
    try:
        lower_for_cuda(fn, *args)
    finally:
        registration.lowering.lower_jaxpr_to_triton_module = original
    return captured


_PTXAS = re.compile(
    r"(?P<stores>\d+) bytes spill stores, (?P<loads>\d+) bytes spill loads.*?Used (?P<regs>\d+) registers", re.S
)


def compile_kernel(kernel: KernelIR, target: str) -> KernelReport:
    """Triton-compile one kernel for `target` ("sm80" / "sm90") and parse ptxas's report."""
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, without its warning
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget

    with tempfile.TemporaryDirectory() as folder:
        path = pathlib.Path(folder) / f"{kernel.name}.ttir"
        path.write_text(kernel.ttir)
        log = io.StringIO()
        previous = knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile
        # Triton prints ptxas -v output (its own invocation); a cache hit would skip ptxas.
        knobs.nvidia.dump_ptxas_log = knobs.compilation.always_compile = True
        try:
            with contextlib.redirect_stdout(log):
                compiled = triton.compile(
                    str(path), target=GPUTarget("cuda", COMPUTE_CAPABILITY[target], 32),
                    options=dict(num_warps=kernel.num_warps, num_stages=kernel.num_stages),
                )
        finally:
            knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = previous
    match = _PTXAS.search(log.getvalue())
    if match is None:
        raise RuntimeError(f"no register/spill line in the ptxas log of {kernel.name} ({target}):\n{log.getvalue()}")
    ptx = compiled.asm["ptx"]
    instructions = sum(
        1 for line in ptx.splitlines()
        if line.strip() and not line.strip().startswith(("//", ".", "$", "{", "}", ")", "("))
        and line.strip().endswith(";")
    )
    return KernelReport(kernel.name, target, kernel.num_warps, kernel.num_stages, int(match["regs"]),
                        int(match["stores"]), int(match["loads"]), int(compiled.metadata.shared), instructions)


def production_loss(n: int, batch: int = 1, heads: int = 16, head_dim: int = 64, window: int = 128,
                    gpu_target: str = "sm90"):
    """(loss, abstract args) of forward + backward at the encoder's shape (bf16 q/k/v, f32 bias)."""
    import jax
    import jax.numpy as jnp

    from sener_jax.ops.band_pallas import banded_attention_pallas

    def loss(q, k, v, bias, key_mask, global_logit, global_value):
        out = banded_attention_pallas(q, k, v, bias, key_mask, window=window, global_logit=global_logit,
                                      global_value=global_value, interpret=False, gpu_target=gpu_target)
        return jnp.sum(out.astype(jnp.float32))

    qkv = jax.ShapeDtypeStruct((batch, heads, n, head_dim), jnp.bfloat16)
    args = (qkv, qkv, qkv, jax.ShapeDtypeStruct((batch, heads, n, 2 * window + 1), jnp.float32),
            jax.ShapeDtypeStruct((batch, n), jnp.bool_), jax.ShapeDtypeStruct((batch, heads, n), jnp.float32),
            jax.ShapeDtypeStruct((batch, heads, head_dim), jnp.bfloat16))
    return jax.grad(loss, argnums=(0, 1, 2, 3, 5, 6)), args


def report(n: int, target: str) -> list[KernelReport]:
    fn, args = production_loss(n, gpu_target=target)
    kernels = capture_triton_kernels(fn, *args, compute_capability=COMPUTE_CAPABILITY[target])
    return [compile_kernel(kernel, target) for kernel in kernels]


def main() -> None:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    print("| N | target | kernel | warps | stages | registers | spill stores / loads (B) | shared (B) | PTX instr |")
    print("|---:|---|---|---:|---:|---:|---|---:|---:|")
    for n in (4096, 65536):
        for target in COMPUTE_CAPABILITY:
            for r in report(n, target):
                print(f"| {n} | {target} | {r.name} | {r.num_warps} | {r.num_stages} | {r.registers} | "
                      f"{r.spill_stores} / {r.spill_loads} | {r.shared_bytes} | {r.ptx_instructions} |", flush=True)


if __name__ == "__main__":
    main()
