"""The cross targets really vectorize: SIMD instructions in the hot (conv) kernels.

Each kernel is disassembled on its own, from its symbol to the next function
symbol: binutils 2.40 leaves RVV instructions undecoded (``.4byte``) when it
disassembles a whole TVM-built riscv library, but decodes an address range.
The range matters: a kernel's parallel loop body is an outlined function with
no symbol of its own, placed right after the kernel.
"""

import re
import subprocess

import pytest

OBJDUMP = {"arm": "aarch64-linux-gnu-objdump", "riscv": "riscv64-linux-gnu-objdump"}
# NEON: FP arithmetic on 4 x f32 lanes. RVV: vector FP arithmetic and f32 vector loads/stores.
VECTOR_OP = {"arm": re.compile(r"\bf(mla|mul|add|max)\s+v\d+\.4s"),
             "riscv": re.compile(r"\b(vf[a-z]+\.v[vf]|vle32\.v|vse32\.v)\b")}


def kernel_ranges(library, objdump, pattern) -> dict[str, tuple[int, int]]:
    """``{symbol: (start, stop)}`` for functions matching ``pattern``; stop = next function."""
    table = subprocess.run([objdump, "-t", str(library)], capture_output=True, text=True, check=True).stdout
    functions = sorted((int(line.split()[0], 16), line.split()[-1]) for line in table.splitlines()
                       if " F .text" in line)
    starts = sorted({address for address, _ in functions})
    ranges = {}
    for address, name in functions:
        if re.search(pattern, name):
            later = [a for a in starts if a > address]
            ranges[name] = (address, later[0] if later else address + 0x100000)
    return ranges


def vector_ops(library, objdump, span, target):
    start, stop = span
    text = subprocess.run([objdump, "-d", f"--start-address={start:#x}", f"--stop-address={stop:#x}",
                           str(library)], capture_output=True, text=True, check=True).stdout
    return len(VECTOR_OP[target].findall(text))


@pytest.mark.parametrize("target", ["arm", "riscv"])
def test_conv_kernels_use_simd(target, bundles):
    library = bundles.bundle("squeezenet", target).path / "model.so"
    kernels = kernel_ranges(library, OBJDUMP[target], r"^(fused_)?(conv2d|winograd)\w*_compute_$")
    # squeezenet's 26 convs (bias + relu fused) share 18 distinct kernels; on arm its four 3x3
    # stride-1 shapes run as Winograd (input transform, GEMM, output transform), RVV keeps them direct.
    winograd = [k for k in kernels if "winograd" in k]
    assert (len(kernels) - len(winograd), len(winograd)) == {"arm": (14, 12), "riscv": (18, 0)}[target], kernels
    counts = {k: vector_ops(library, OBJDUMP[target], span, target) for k, span in kernels.items()}
    vectorized = [k for k, n in counts.items() if n > 0]
    # Every conv kernel has vector FP code; print the counts when that fails.
    assert len(vectorized) == len(kernels), counts


@pytest.mark.parametrize("target", ["arm", "riscv"])
def test_depthwise_grouped_and_dense_kernels_use_simd(target, bundles):
    library = bundles.bundle("shufflenet", target).path / "model.so"
    kernels = kernel_ranges(library, OBJDUMP[target], r"^fused_(depthwise_conv2d|conv2d|matmul)\w*_compute_$")
    families = {re.match(r"fused_(depthwise_conv2d|conv2d|matmul)", k).group(1) for k in kernels}
    assert families == {"depthwise_conv2d", "conv2d", "matmul"}
    counts = {k: vector_ops(library, OBJDUMP[target], span, target) for k, span in kernels.items()}
    assert all(n > 0 for n in counts.values()), counts
