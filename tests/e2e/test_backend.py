"""edgecc.backend under the ONNX suite's own runner (onnx.backend.test.BackendTest).

A handful of node cases that edgecc passes today, across op families (elementwise,
conv, pooling, matmul, reductions, softmax, layout ops); the whole suite is
``bench/conformance.py``'s job.
"""

import onnx.backend.test

import edgecc.backend

INCLUDED = [
    "test_relu", "test_add_bcast", "test_conv_with_strides_padding", "test_maxpool_2d_pads",
    "test_averagepool_2d_strides", "test_matmul_3d", "test_gemm_default_matrix_bias", "test_softmax_axis_1",
    "test_reduce_max_default_axes_keepdim_example", "test_transpose_all_permutations_2", "test_concat_3d_axis_1",
    "test_sigmoid",
]

backend_test = onnx.backend.test.BackendTest(edgecc.backend, __name__)
wanted = {f"{name}_cpu" for name in INCLUDED}
cases = backend_test.test_cases  # a property: builds new classes on every access
for case_class in cases.values():  # keep only the chosen cases (no skip noise)
    for attr in [a for a in vars(case_class) if a.startswith("test_") and a not in wanted]:
        delattr(case_class, attr)
globals().update({name: case_class for name, case_class in cases.items()
                  if any(a.startswith("test_") for a in vars(case_class))})
