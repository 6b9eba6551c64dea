"""ONNX ``RNN``/``GRU``/``LSTM`` through edgecc, checked against ONNX Runtime.

ONNX Runtime's CPU kernels reject ``layout=1``, so a batch-major model is checked
against the same model in ``layout=0`` with its inputs and outputs transposed.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgecc.backend

RTOL, ATOL = 1e-4, 1e-5
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def recurrent_model(op, *, seq=5, batch=3, inp=4, hidden=6, direction="forward", layout=0,
                    bias=True, initial=True, peepholes=False, seq_lens=None, seed=0, opset=22, **attrs):
    """A one-node model and its inputs. ``seq_lens``: lengths, fed as a graph input
    (``("input", lengths)``) or baked in as an initializer (``("const", lengths)``)."""
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    gates = GATES[op]

    def rand(*shape):
        return rng.uniform(-1, 1, shape).astype(np.float32)

    state_shape = [batch, dirs, hidden] if layout else [dirs, batch, hidden]
    x_shape = [batch, seq, inp] if layout else [seq, batch, inp]
    feeds = {"X": rand(*x_shape)}
    inits = [numpy_helper.from_array(rand(dirs, gates * hidden, inp), "W"),
             numpy_helper.from_array(rand(dirs, gates * hidden, hidden), "R")]
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    names = ["X", "W", "R", "", "", "", "", ""]
    if bias:
        inits.append(numpy_helper.from_array(rand(dirs, 2 * gates * hidden), "B"))
        names[3] = "B"
    if seq_lens is not None:
        kind, lengths = seq_lens
        lengths = np.asarray(lengths, np.int32)
        if kind == "input":
            feeds["L"] = lengths
            graph_inputs.append(helper.make_tensor_value_info("L", TensorProto.INT32, [batch]))
        else:
            inits.append(numpy_helper.from_array(lengths, "L"))
        names[4] = "L"
    states = ["initial_h", "initial_c"] if op == "LSTM" else ["initial_h"]
    if initial:
        for slot, name in zip((5, 6), states):
            feeds[name] = rand(*state_shape)
            graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, state_shape))
            names[slot] = name
    if peepholes:
        inits.append(numpy_helper.from_array(rand(dirs, 3 * hidden), "P"))
        names[7] = "P"
    while names[-1] == "":
        names.pop()
    outputs = ["Y", "Y_h", "Y_c"] if op == "LSTM" else ["Y", "Y_h"]
    node = helper.make_node(op, names, outputs, hidden_size=hidden, direction=direction,
                            **({"layout": 1} if layout else {}), **attrs)
    y_shape = [batch, seq, dirs, hidden] if layout else [seq, dirs, batch, hidden]
    graph_outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, y_shape)]
    graph_outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, state_shape) for n in outputs[1:]]
    graph = helper.make_graph([node], op.lower(), graph_inputs, graph_outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model, feeds


def run_ort(model, feeds):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def run_edgecc(model, feeds):
    return edgecc.backend.prepare(model).run(feeds)


def assert_matches_ort(op, **kwargs):
    model, feeds = recurrent_model(op, **kwargs)
    got = run_edgecc(model, feeds)
    if kwargs.get("layout"):
        # ONNX Runtime runs the time-major twin: swap batch and sequence/direction axes.
        twin, _ = recurrent_model(op, **{**kwargs, "layout": 0})
        twin_feeds = {k: v if k == "L" else np.swapaxes(v, 0, 1) for k, v in feeds.items()}
        want = run_ort(twin, twin_feeds)
        want = [np.transpose(want[0], [2, 0, 1, 3])] + [np.swapaxes(s, 0, 1) for s in want[1:]]
    else:
        want = run_ort(model, feeds)
    assert len(got) == len(want)
    for name, g, w in zip(["Y", "Y_h", "Y_c"], got, want):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL, err_msg=f"{op} output {name}")


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_directions(op, direction):
    assert_matches_ort(op, direction=direction, seed=len(direction))


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_runtime_sequence_lens_bidirectional(op):
    assert_matches_ort(op, direction="bidirectional", seq_lens=("input", [5, 2, 3]), seed=1)


@pytest.mark.parametrize("op", ["GRU", "LSTM"])
def test_constant_sequence_lens_reverse(op):
    assert_matches_ort(op, direction="reverse", seq_lens=("const", [1, 5, 4]), seed=2)


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_batch_major_layout(op):
    assert_matches_ort(op, direction="bidirectional", layout=1, seed=3)


def test_batch_major_layout_with_sequence_lens():
    assert_matches_ort("LSTM", layout=1, seq_lens=("input", [3, 5, 1]), seed=4)


def test_gru_linear_before_reset_without_initial_state():
    assert_matches_ort("GRU", direction="bidirectional", linear_before_reset=1, initial=False, seed=5)


def test_lstm_peepholes_clip_input_forget():
    assert_matches_ort("LSTM", direction="bidirectional", peepholes=True, clip=0.7, input_forget=1,
                       seq_lens=("input", [4, 5, 2]), seed=6)


def test_activations_with_alpha_beta():
    # Per direction (f, g, h); alpha/beta are consumed only by the functions that take them.
    activations = ["HardSigmoid", "LeakyRelu", "Softsign", "Sigmoid", "ScaledTanh", "Tanh"]
    assert_matches_ort("LSTM", direction="bidirectional", activations=activations,
                       activation_alpha=[0.3, 0.05, 0.9], activation_beta=[0.4, 1.2], seed=7)


def test_rnn_without_bias_and_relu():
    assert_matches_ort("RNN", bias=False, initial=False, activations=["Relu"], seed=8)


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_opset_7(op):
    assert_matches_ort(op, direction="bidirectional", opset=7, seed=9)
