"""64-bit RISC-V with the V extension (RVV 1.0) at an explicit vector length."""

from .base import TRIPLES, TargetPreset, with_mattr

RV64GC = ["+64bit", "+m", "+a", "+f", "+d", "+c"]


def riscv(name="riscv", mcpu=None, mattr=None, vlen=None, **_):
    vlen = vlen or (128 if name == "riscv-vlen128" else 256)
    if vlen < 128 or vlen & (vlen - 1):
        from edgecc.errors import UserInputError

        raise UserInputError(f"--vlen must be a power of two >= 128, got {vlen}")
    # zvl<N>b tells LLVM the minimum VLEN, so it can size vector loops for it.
    llvm = {"kind": "llvm", "mtriple": TRIPLES["riscv64"], "mcpu": mcpu or "generic-rv64",
            "mabi": "lp64d", "mattr": with_mattr(RV64GC + ["+v", f"+zvl{vlen}b"], mattr)}
    return TargetPreset(name, f"rv64gcv, RVV 1.0, VLEN {vlen}", "riscv64", llvm, vlen=vlen)
