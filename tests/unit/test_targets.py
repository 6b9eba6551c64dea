import pytest

from edgecc.errors import UserInputError
from edgecc.targets import TARGETS, get_target

from ..conftest import run_cli


def test_required_presets_exist():
    for name in ["host", "arm", "arm-a55", "arm-a72", "arm-a76", "riscv", "riscv-vlen128", "cuda", "jetson-orin"]:
        assert name in TARGETS


def test_riscv_vlen_reaches_llvm_and_emulator():
    preset = get_target("riscv")
    assert preset.vlen == 256 and "+zvl256b" in preset.llvm["mattr"] and "+v" in preset.llvm["mattr"]
    assert get_target("riscv-vlen128").vlen == 128
    assert "+zvl512b" in get_target("riscv", vlen=512).llvm["mattr"]
    with pytest.raises(UserInputError, match="power of two"):
        get_target("riscv", vlen=100)


def test_arm_presets_pick_core_and_features():
    assert get_target("arm-a76").llvm["mcpu"] == "cortex-a76"
    assert "+dotprod" in get_target("arm-a76").llvm["mattr"]
    assert "+dotprod" not in get_target("arm-a72").llvm["mattr"]
    overridden = get_target("arm-a76", mattr=["-dotprod", "+i8mm"], mcpu="neoverse-n1").llvm
    assert overridden["mcpu"] == "neoverse-n1"
    assert "-dotprod" in overridden["mattr"] and "+dotprod" not in overridden["mattr"] and "+i8mm" in overridden["mattr"]


def test_cuda_presets():
    cuda = get_target("cuda")
    assert cuda.device == "cuda" and cuda.cuda_arch == "sm_87" and cuda.arch == "x86_64"
    assert get_target("cuda", cuda_arch="sm_90").tvm_target().attrs["arch"] == "sm_90"
    orin = get_target("jetson-orin")
    assert orin.arch == "aarch64" and orin.cuda_arch == "sm_87"
    assert str(orin.tvm_target().host.attrs["mtriple"]) == "aarch64-linux-gnu"
    with pytest.raises(UserInputError, match="sm_87"):
        get_target("cuda", cuda_arch="ampere")


def test_override_that_does_not_apply_is_an_error():
    with pytest.raises(UserInputError, match="riscv targets only"):
        get_target("arm", vlen=256)
    with pytest.raises(UserInputError, match="cuda and jetson-orin only"):
        get_target("arm", cuda_arch="sm_90")


def test_unknown_target_lists_valid_ones():
    with pytest.raises(UserInputError) as err:
        get_target("avr")
    assert "unknown target 'avr'" in str(err.value)
    for name in TARGETS:
        assert name in str(err.value)


def test_cli_targets_lists_one_line_each():
    proc = run_cli("targets")
    assert proc.returncode == 0
    lines = proc.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(TARGETS)


def test_cli_unknown_target(tiny_path, tmp_path):
    proc = run_cli("build", tiny_path, "--target", "avr", "-o", tmp_path / "out")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"edgecc: error: unknown target 'avr'; valid targets: {', '.join(TARGETS)}"]
    assert not (tmp_path / "out").exists()


def test_cli_missing_cross_compiler_names_package(tiny_path, tmp_path):
    # An empty PATH hides the cross compilers exactly as on a machine without them.
    proc = run_cli("build", tiny_path, "--target", "riscv", "-o", tmp_path / "out", env={"PATH": str(tmp_path)})
    assert proc.returncode == 2
    assert "riscv64-linux-gnu-g++" in proc.stderr and "apt-get install g++-riscv64-linux-gnu" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli("build", tiny_path, "--target", "arm-a55", "-o", tmp_path / "out", env={"PATH": str(tmp_path)})
    assert "apt-get install g++-aarch64-linux-gnu" in proc.stderr
    assert not (tmp_path / "out").exists()
