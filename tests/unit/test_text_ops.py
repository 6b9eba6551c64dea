"""edgecc's ``TfIdfVectorizer`` (``edgecc/frontend/text.py``) and ``Upsample``
(``edgecc/frontend/vision.py``) converters, one-node models checked against ONNX
Runtime or ``onnx.reference``.

Counts, nearest-neighbour results and unweighted outputs match exactly; weighted
and linear results within RTOL/ATOL below (float32 products summed in another order).
"""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import edgecc.backend
from edgecc.errors import UserInputError

RTOL, ATOL = 1e-5, 1e-6

# Unigrams 2, 3, 5; bigrams (2, 3), (3, 5), (5, 5); trigram (2, 3, 5).
POOL = [2, 3, 5, 2, 3, 3, 5, 5, 5, 2, 3, 5]
NGRAM_COUNTS = [0, 3, 9]
NGRAM_INDEXES = [0, 1, 2, 3, 4, 5, 6]
WEIGHTS = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]


def one_node_model(op, inputs, outputs, *, initializers=(), opset=9, **attrs):
    """A model of one node. ``inputs``/``outputs``: (name, elem type, shape); initializers: arrays by name."""
    inits = [numpy_helper.from_array(value, name) for name, value in initializers]
    names = [name for name, _, _ in inputs] + [name for name, _ in initializers]
    node = helper.make_node(op, names, [name for name, _, _ in outputs], **attrs)
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info(*i) for i in inputs],
                              [helper.make_tensor_value_info(*o) for o in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def run_edgecc(model, *feeds):
    return np.asarray(edgecc.backend.prepare(model).run(list(feeds))[0])


def run_ort(model, feeds: dict):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def tfidf_model(shape, elem, out_size, **attrs):
    out_shape = [out_size] if len(shape) == 1 else [shape[0], out_size]
    return one_node_model("TfIdfVectorizer", [("x", elem, shape)], [("y", TensorProto.FLOAT, out_shape)],
                          **attrs)


@pytest.mark.parametrize("mode", ["TF", "IDF", "TFIDF"])
@pytest.mark.parametrize("shape", [[13], [3, 9]])
@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_tfidf_matches_onnxruntime(mode, shape, dtype):
    x = np.random.default_rng(0).integers(1, 7, shape).astype(dtype)
    elem = TensorProto.INT32 if dtype == "int32" else TensorProto.INT64
    weighted = mode != "TF"
    model = tfidf_model(shape, elem, 7, mode=mode, min_gram_length=1, max_gram_length=3,
                        max_skip_count=2, pool_int64s=POOL, ngram_counts=NGRAM_COUNTS,
                        ngram_indexes=NGRAM_INDEXES, **({"weights": WEIGHTS} if weighted else {}))
    got, expected = run_edgecc(model, x), run_ort(model, {"x": x})
    assert got.shape == expected.shape and got.dtype == expected.dtype
    if weighted:
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    else:
        np.testing.assert_array_equal(got, expected)
    assert expected.any()  # the input does hit the pool


@pytest.mark.parametrize("mode", ["TF", "IDF", "TFIDF"])
def test_tfidf_unweighted_modes(mode):
    x = np.array([[2, 3, 5, 5, 2, 3], [5, 5, 5, 1, 2, 2]], np.int64)
    model = tfidf_model([2, 6], TensorProto.INT64, 7, mode=mode, min_gram_length=1, max_gram_length=2,
                        max_skip_count=0, pool_int64s=POOL, ngram_counts=NGRAM_COUNTS,
                        ngram_indexes=NGRAM_INDEXES)
    np.testing.assert_array_equal(run_edgecc(model, x), run_ort(model, {"x": x}))


def test_tfidf_length_range_shared_columns_and_no_fit():
    """Unigrams outside [min, max] keep their numbers; two bigrams share column 0; a
    trigram longer than the skipped input never counts."""
    x = np.array([2, 3, 5, 5, 3], np.int64)
    model = tfidf_model([5], TensorProto.INT64, 4, mode="TF", min_gram_length=2, max_gram_length=3,
                        max_skip_count=3, pool_int64s=POOL, ngram_counts=NGRAM_COUNTS,
                        ngram_indexes=[3, 3, 3, 0, 1, 0, 2])
    expected = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_array_equal(run_edgecc(model, x), expected)


def test_tfidf_string_pool_is_refused():
    model = tfidf_model([4], TensorProto.INT64, 2, mode="TF", min_gram_length=1, max_gram_length=1,
                        max_skip_count=0, pool_strings=["a", "b"], ngram_counts=[0],
                        ngram_indexes=[0, 1])
    with pytest.raises(UserInputError, match="NotImplementedError: TfIdfVectorizer with pool_strings"):
        run_edgecc(model, np.zeros(4, np.int64))


def upsample_model(x, scales, mode, opset):
    out_shape = [int(d * s) for d, s in zip(x.shape, scales)]
    io = dict(inputs=[("x", TensorProto.FLOAT, x.shape)], outputs=[("y", TensorProto.FLOAT, out_shape)])
    if opset == 7:
        return one_node_model("Upsample", **io, opset=7, mode=mode, scales=scales)
    return one_node_model("Upsample", **io, initializers=[("scales", np.array(scales, np.float32))],
                          opset=opset, mode=mode)


@pytest.mark.parametrize("opset", [7, 9])
@pytest.mark.parametrize("mode, scales", [("nearest", [1.0, 1.0, 2.0, 3.0]), ("nearest", [1.0, 2.0, 1.5, 2.5]),
                                          ("linear", [1.0, 1.0, 2.0, 3.0]), ("linear", [1.0, 1.0, 1.5, 2.5])])
def test_upsample_matches_onnxruntime(opset, mode, scales):
    x = np.random.default_rng(1).normal(size=(1, 2, 3, 4)).astype(np.float32)
    model = upsample_model(x, scales, mode, opset)
    got, expected = run_edgecc(model, x), run_ort(model, {"x": x})
    assert got.shape == expected.shape
    if mode == "nearest":
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
