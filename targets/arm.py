"""64-bit ARM (aarch64) with NEON; the Cortex-A presets pick the core's scheduling model."""

from .base import TRIPLES, TargetPreset, with_mattr

# name: (mcpu, base mattr, description)
ARM_CORES = {
    "arm": ("generic", ["+neon"], "aarch64 with NEON (any ARMv8-A core)"),
    "arm-a55": ("cortex-a55", ["+neon", "+dotprod"], "Cortex-A55 (ARMv8.2-A, NEON + dotprod)"),
    "arm-a72": ("cortex-a72", ["+neon"], "Cortex-A72 (ARMv8-A, NEON; e.g. Raspberry Pi 4)"),
    "arm-a76": ("cortex-a76", ["+neon", "+dotprod"], "Cortex-A76 (ARMv8.2-A, NEON + dotprod; e.g. Pi 5)"),
}


def arm_llvm(name="arm", mcpu=None, mattr=None):
    core, base_mattr, _ = ARM_CORES[name]
    return {"kind": "llvm", "mtriple": TRIPLES["aarch64"], "mcpu": mcpu or core,
            "mattr": with_mattr(base_mattr, mattr)}


def arm(name="arm", mcpu=None, mattr=None, **_):
    return TargetPreset(name, ARM_CORES[name][2], "aarch64", arm_llvm(name, mcpu, mattr))
