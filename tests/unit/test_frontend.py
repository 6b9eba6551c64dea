import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecc.errors import UnsupportedOpError, UserInputError
from edgecc.frontend import CONVERTERS, import_onnx, inspect_model, load_onnx, register_converter
from edgecc.zoo import light_model

from ..conftest import mlp_model, run_cli, tiny_model


def save(model, path):
    onnx.save(model, str(path))
    return path


def test_corrupt_file_is_one_clear_error(tmp_path):
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(b"\x08\x07garbage that is not protobuf \xff\xff\xff")
    with pytest.raises(UserInputError, match="not a valid ONNX model"):
        load_onnx(path)


def test_truncated_file(tmp_path):
    data = light_model("squeezenet").SerializeToString()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    proc = run_cli("build", path, "-o", tmp_path / "out")
    assert proc.returncode == 2
    assert proc.stderr.startswith("edgecc: error: ") and "not a valid ONNX model" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_file(tmp_path):
    proc = run_cli("inspect", tmp_path / "nope.onnx")
    assert proc.returncode == 2 and "model file not found" in proc.stderr


def test_unsupported_ops_named_with_domain_opset_and_first_node(tmp_path):
    model = tiny_model()
    extra = [helper.make_node("FrobnicateOp", ["y"], ["z"], name="frob_1"),
             helper.make_node("FrobnicateOp", ["z"], ["w"], name="frob_2"),
             helper.make_node("Mystery", ["w"], ["v"], name="mystery_0", domain="com.example")]
    model.graph.node.extend(extra)
    model.opset_import.append(helper.make_opsetid("com.example", 3))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 4]))
    with pytest.raises(UnsupportedOpError) as err:
        import_onnx(model)
    message = str(err.value)
    assert "FrobnicateOp (domain 'ai.onnx', opset 17, first node 'frob_1')" in message
    assert "Mystery (domain 'com.example', opset 3, first node 'mystery_0')" in message
    assert "frob_2" not in message
    proc = run_cli("build", save(model, tmp_path / "m.onnx"), "-o", tmp_path / "out")
    assert proc.returncode == 2 and "unsupported ONNX ops: FrobnicateOp" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_unsupported_op_inside_a_subgraph_is_found():
    then_graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["t"], name="inner")], "then", [],
                                   [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4])])
    else_graph = helper.make_graph([helper.make_node("Relu", ["x"], ["e"])], "else", [],
                                   [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4])])
    cond = numpy_helper.from_array(np.array(True), "cond")
    node = helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], initializer=[cond])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOpError, match="NoSuchOp .*first node 'inner'"):
        import_onnx(model)


def test_wrong_opset_imports(tmp_path):
    with pytest.raises(UserInputError, match="imports ONNX opset 99"):
        load_onnx(save(tiny_model(opset=99), tmp_path / "future.onnx"))
    model = tiny_model()
    model.graph.node[0].domain = "com.undeclared"
    with pytest.raises(UserInputError, match="domain 'com.undeclared' that the model does not import"):
        load_onnx(save(model, tmp_path / "undeclared.onnx"))


def test_missing_external_data(tmp_path):
    model = mlp_model()
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    assert load_onnx(tmp_path / "ext.onnx").graph.initializer[0].raw_data  # loads when present
    (tmp_path / "weights.bin").unlink()
    proc = run_cli("inspect", tmp_path / "ext.onnx")
    assert proc.returncode == 2
    assert "external data file 'weights.bin' for tensor 'w1' is missing" in proc.stderr


def test_symbolic_dims_stay_symbolic_unless_bound():
    mod, inputs, outputs = import_onnx(mlp_model())
    assert inputs[0].shape == ("batch", 16) and outputs[0].shape[0] == "batch"
    mod, inputs, _ = import_onnx(mlp_model(), {"x": [2, 16]})
    assert inputs[0].shape == (2, 16)
    with pytest.raises(UserInputError, match="model's inputs are: x"):
        import_onnx(mlp_model(), {"y": [1, 16]})
    mod, inputs, outputs = import_onnx(mlp_model(), {"x": [3, 16]})
    assert [(s.name, s.shape, s.dtype) for s in inputs] == [("x", (3, 16), "float32")]
    assert [(s.name, s.shape) for s in outputs] == [("probs", (3, 8)), ("hidden", (3, 32))]


def test_inspect_reports_model(tmp_path):
    path = save(light_model("squeezenet"), tmp_path / "squeezenet.onnx")
    info = inspect_model(path)
    assert [i.name for i in info.inputs] == ["data_0"] and info.inputs[0].shape == (1, 3, 224, 224)
    assert info.outputs[0].shape == (1, 1000, 1, 1)
    assert info.op_histogram["Conv"] == 26 and "ConstantOfShape" not in info.op_histogram
    assert info.num_params == 1_235_496 and info.unsupported == []
    proc = run_cli("inspect", path)
    assert proc.returncode == 0 and "Conv x26" in proc.stdout and "unsupported: none" in proc.stdout


def test_inspect_exits_2_on_unsupported(tmp_path):
    proc = run_cli("inspect", save(tiny_model("Frobnicate"), tmp_path / "m.onnx"))
    assert proc.returncode == 2 and "unsupported: Frobnicate (domain 'ai.onnx'" in proc.stdout


def test_registered_converter_is_used_by_the_importer():
    from tvm import relax
    from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

    @register_converter("TimesThree", domain="ai.edgecc.test")
    class TimesThree(OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            return relax.op.multiply(inputs[0], relax.const(3.0, "float32"))

    try:
        model = tiny_model("TimesThree", domain="ai.edgecc.test", extra_opsets=[("ai.edgecc.test", 1)])
        mod, _, _ = import_onnx(model)
        assert "R.multiply" in mod.script()
    finally:
        del CONVERTERS[("ai.edgecc.test", "TimesThree")]
    with pytest.raises(UnsupportedOpError, match="TimesThree"):
        import_onnx(model)


def test_input_names_become_identifiers_inside_but_not_in_the_bundle():
    from edgecc.frontend.loader import rename_inputs_to_identifiers

    model = light_model("shufflenet")  # input "gpu_0/data_0": not a C identifier
    renamed = rename_inputs_to_identifiers(model)
    assert [i.name for i in renamed.graph.input] == ["gpu_0_data_0"]
    assert renamed.graph.node[0].input[0] == "gpu_0_data_0"
    mod, inputs, _ = import_onnx(model)
    assert [i.name for i in inputs] == ["gpu_0/data_0"]
    assert "gpu_0/data_0" not in mod.script() and "gpu_0_data_0" in mod.script()
