"""The cross targets really vectorize: SIMD instructions in the hot (conv) kernels.

Each kernel is disassembled on its own (``objdump --disassemble=SYMBOL``):
binutils 2.40 leaves RVV instructions undecoded (``.4byte``) when it
disassembles a whole TVM-built riscv library, but decodes them per symbol.
"""

import re
import subprocess

import pytest

OBJDUMP = {"arm": "aarch64-linux-gnu-objdump", "riscv": "riscv64-linux-gnu-objdump"}
# NEON: FP arithmetic on 4 x f32 lanes. RVV: vector FP arithmetic and f32 vector loads/stores.
VECTOR_OP = {"arm": re.compile(r"\bf(mla|mul|add|max)\s+v\d+\.4s"),
             "riscv": re.compile(r"\b(vf[a-z]+\.v[vf]|vle32\.v|vse32\.v)\b")}


def kernel_symbols(library, objdump, pattern):
    table = subprocess.run([objdump, "-t", str(library)], capture_output=True, text=True, check=True).stdout
    return sorted({line.split()[-1] for line in table.splitlines()
                   if " F .text" in line and re.search(pattern, line.split()[-1])})


def vector_ops(library, objdump, symbol, target):
    text = subprocess.run([objdump, "-d", f"--disassemble={symbol}", str(library)],
                          capture_output=True, text=True, check=True).stdout
    return len(VECTOR_OP[target].findall(text))


@pytest.mark.parametrize("target", ["arm", "riscv"])
def test_conv_kernels_use_simd(target, bundles):
    library = bundles.bundle("squeezenet", target).path / "model.so"
    kernels = kernel_symbols(library, OBJDUMP[target], r"^fused_conv2d\w*_compute_$")
    assert len(kernels) == 18  # squeezenet's 26 convs (bias + relu fused) share 18 distinct kernels
    counts = {k: vector_ops(library, OBJDUMP[target], k, target) for k in kernels}
    vectorized = [k for k, n in counts.items() if n > 0]
    # Every conv kernel has vector FP code; print the counts when that fails.
    assert len(vectorized) == len(kernels), counts
