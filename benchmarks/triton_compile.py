"""Compile every kernel variant the triton backend can launch for sm_90 (H100/H200), no GPU needed.

Triton compiles ahead of time for a target it is told of (`GPUTarget("cuda", 90, 32)`), down to
PTX and a cubin, so what Triton's interpreter checks against the reference in the tests is also
proven to compile for the hardware (the interpreter accepts code the compiler refuses). The
variants are the backend's own list (`triton_launch.kernel_variants()`: kernel x input dtype x
launch config), compiled as the backend compiles them on a GPU's first forward
(`triton_launch.compile_variant`: the argument types its launchers pass). For each it prints the
shared memory Triton reports, the registers and spills ptxas reports (`ptxas -v`, the ptxas
Triton ships), and the tensor-core instructions in the PTX (`mma.sync` and Hopper's
`wgmma.mma_async`), then a final line `compiled N kernels for sm_90`.

    python benchmarks/triton_compile.py          # or: sasa bench triton-compile
    python benchmarks/triton_compile.py --jobs 1
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # kernels must be compiled, not interpreted

from report import write_report  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TARGET = ("cuda", 90, 32)  # sm_90, warp size 32
REGISTERS = re.compile(r"Used (\d+) registers")
MMA = re.compile(r"^\s*mma\.sync\.", re.MULTILINE)
WGMMA = re.compile(r"^\s*wgmma\.mma_async\.", re.MULTILINE)
SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def compile_variant(variant: tuple) -> dict:
    from triton.backends.compiler import GPUTarget

    from sasa_lightning.nn.backends.triton_launch import compile_variant

    kernel, dtype, config = variant
    compiled = compile_variant(kernel, dtype, config, GPUTarget(*TARGET))
    ptx = compiled.asm["ptx"]
    registers, spill_stores, spill_loads = _ptxas_report(ptx)
    return {
        "kernel": kernel, "dtype": str(dtype).removeprefix("torch."), **config,
        "shared_bytes": compiled.metadata.shared, "registers": registers, "spill_stores": spill_stores,
        "spill_loads": spill_loads, "mma": len(MMA.findall(ptx)), "wgmma": len(WGMMA.findall(ptx)),
    }


def _ptxas_report(ptx: str) -> tuple[int | None, int | None, int | None]:
    """Registers and spill bytes of a PTX module, from the ptxas Triton ships; None where absent."""
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(TARGET[1])
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / "kernel.ptx"
        source.write_text(ptx)
        result = subprocess.run([ptxas.path, "-v", f"--gpu-name=sm_{TARGET[1]}a", str(source), "-o",
                                 str(Path(work) / "kernel.cubin")], capture_output=True, text=True)
    registers, spills = REGISTERS.search(result.stderr), SPILLS.search(result.stderr)
    return (int(registers.group(1)) if registers else None,
            *((int(spills.group(1)), int(spills.group(2))) if spills else (None, None)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="compiles at once (default: every core)")
    parser.add_argument("--out", type=Path, default=RESULTS / "triton-compile-sm90.json")
    args = parser.parse_args()
    from sasa_lightning.nn.backends.triton_launch import kernel_variants

    variants = kernel_variants()
    print(f"{'kernel':22} {'dtype':8} {'D':>3} {'tile':>5} {'halo':>5} {'warps':>5} {'shared':>7} {'regs':>5} "
          f"{'spills':>7} {'mma':>5} {'wgmma':>5}", flush=True)
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(compile_variant, variants))
    for r in results:
        spills = "-" if r["spill_stores"] is None else r["spill_stores"] + r["spill_loads"]
        print(f"{r['kernel']:22} {r['dtype']:8} {r['BLOCK_D']:3} {r['TILE_H']:>2}x{r['TILE_W']:<2} {r['BLOCK_HALO']:5} "
              f"{r['num_warps']:5} {r['shared_bytes']:7} {str(r['registers']):>5} {spills:>7} {r['mma']:5} "
              f"{r['wgmma']:5}")
    write_report(args.out, "triton_compile", target=f"sm_{TARGET[1]}", kernels=results)
    print(f"compiled {len(results)} kernels for sm_{TARGET[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
