"""``edgecc bench``: side-by-side medians with ONNX Runtime, and per-kernel times."""

import onnx

from edgecc.bench import benchmark

from ..conftest import mlp_model, run_cli


def test_bench_reports_both_and_kernels():
    result = benchmark(mlp_model(), input_shapes={"x": [4, 16]}, threads=1, rounds=2, repeat=3, per_op=True)
    assert result.edgecc_ms > 0 and result.peer_ms > 0
    assert result.ratio == result.edgecc_ms / result.peer_ms
    names = [name for name, _, _ in result.per_op]
    assert any("matmul" in name for name in names) and any("softmax" in name for name in names)
    assert [ms for _, _, ms in result.per_op] == sorted((ms for _, _, ms in result.per_op), reverse=True)


def test_cli_bench(tmp_path):
    onnx.save(mlp_model(), str(tmp_path / "mlp.onnx"))
    proc = run_cli("bench", tmp_path / "mlp.onnx", "--input-shape", "x=4,16", "--rounds", "2", "--repeat", "2",
                   "--threads", "1", "--per-op")
    assert proc.returncode == 0, proc.stderr
    assert "onnxruntime" in proc.stdout and "ratio" in proc.stdout and "per kernel" in proc.stdout
    proc = run_cli("bench", tmp_path / "mlp.onnx", "--target", "arm")
    assert proc.returncode == 2 and "use --target host" in proc.stderr
