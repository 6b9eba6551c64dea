"""Recurrent layers (``RNN``, ``GRU``, ``LSTM``): unrolled over the static sequence length.

TVM's importer has no converter for these. Each direction becomes one matmul for
the input projection of every step, then per step a matmul with the recurrence
weights and the gate math, all plain Relax ops that fuse like any other graph.
``sequence_lens`` masks the steps past a batch row's length: the state is held
and the output is zero, as ONNX Runtime does; a constant ``sequence_lens`` equal
to the full length adds no masking at all.

Semantics follow the ONNX spec and ONNX Runtime's CPU kernels where the spec is
loose: ``clip`` bounds every gate pre-activation (not the LSTM cell state before
``h``), ``input_forget`` sets ``f = 1 - i``, and a row of length 0 gives zero
``Y_h``/``Y_c``.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter, get_constant

from .converters import register_converter

# Activation name -> (uses alpha, uses beta, default alpha, default beta). Defaults
# are those of the ONNX operator of the same name, as the spec asks; alpha and beta
# are consumed in activation order, only by the functions that take them.
_ACTIVATION_ARGS = {
    "relu": (False, False, 0.0, 0.0),
    "tanh": (False, False, 0.0, 0.0),
    "sigmoid": (False, False, 0.0, 0.0),
    "softsign": (False, False, 0.0, 0.0),
    "softplus": (False, False, 0.0, 0.0),
    "affine": (True, True, 1.0, 0.0),
    "leakyrelu": (True, False, 0.01, 0.0),
    "thresholdedrelu": (True, False, 1.0, 0.0),
    "scaledtanh": (True, True, 1.0, 1.0),
    "hardsigmoid": (True, True, 0.2, 0.5),
    "elu": (True, False, 1.0, 0.0),
}


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _activation(name: str, alpha: float, beta: float, dtype: str):
    """The activation ``name`` as a function of a Relax expression."""
    op = relax.op

    def const(v):
        return relax.const(v, dtype)

    funcs = {
        "relu": op.nn.relu,
        "tanh": op.tanh,
        "sigmoid": op.sigmoid,
        "softsign": lambda x: op.divide(x, op.add(op.abs(x), const(1.0))),
        "softplus": lambda x: op.log(op.add(op.exp(x), const(1.0))),
        "affine": lambda x: op.add(op.multiply(x, const(alpha)), const(beta)),
        "leakyrelu": lambda x: op.nn.leakyrelu(x, alpha),
        "thresholdedrelu": lambda x: op.where(op.greater(x, const(alpha)), x, const(0.0)),
        "scaledtanh": lambda x: op.multiply(const(alpha), op.tanh(op.multiply(x, const(beta)))),
        "hardsigmoid": lambda x: op.minimum(
            op.maximum(op.add(op.multiply(x, const(alpha)), const(beta)), const(0.0)), const(1.0)),
        "elu": lambda x: op.where(op.greater_equal(x, const(0.0)), x,
                                  op.multiply(const(alpha), op.subtract(op.exp(x), const(1.0)))),
    }
    return funcs[name]


def _activations(attr: dict, defaults: tuple[str, ...], num_directions: int, dtype: str) -> list[list]:
    """Per direction, the list of activation functions (``f``, ``g``, ``h`` order)."""
    names = [_text(n).lower() for n in attr.get("activations", ())] or list(defaults) * num_directions
    if len(names) == len(defaults) and num_directions == 2:
        names = names * 2
    if len(names) != len(defaults) * num_directions:
        raise ValueError(f"expected {len(defaults) * num_directions} activations, got {names}")
    alphas = list(attr.get("activation_alpha", ()))
    betas = list(attr.get("activation_beta", ()))
    funcs = []
    for name in names:
        if name not in _ACTIVATION_ARGS:
            raise ValueError(f"unsupported recurrent activation {name!r}; "
                             f"expected one of {sorted(_ACTIVATION_ARGS)}")
        uses_alpha, uses_beta, alpha, beta = _ACTIVATION_ARGS[name]
        if uses_alpha and alphas:
            alpha = alphas.pop(0)
        if uses_beta and betas:
            beta = betas.pop(0)
        funcs.append(_activation(name, alpha, beta, dtype))
    per = len(defaults)
    return [funcs[d * per:(d + 1) * per] for d in range(num_directions)]


def _input(inputs, index: int):
    return inputs[index] if len(inputs) > index else None


def _direction(bb, tensor, d: int):
    """``tensor[d]`` for a tensor with a leading direction axis."""
    sliced = relax.op.strided_slice(tensor, axes=[0], begin=[d], end=[d + 1])
    return bb.emit(relax.op.squeeze(sliced, axis=[0]))


def _split(bb, tensor, sections: int | list[int], axis: int) -> list:
    """``split`` into ``sections`` equal parts, or at the given indices."""
    count = sections if isinstance(sections, int) else len(sections) + 1
    if count == 1:
        return [tensor]
    parts = bb.emit(relax.op.split(tensor, sections, axis=axis))
    return [bb.emit(relax.TupleGetItem(parts, i)) for i in range(count)]


def _step_masks(bb, seq_lens, params, seq_length: int, batch: int):
    """Per step a ``[batch, 1]`` bool mask (step < length) and a mask of non-empty rows;
    ``(None, None)`` when every row runs the full sequence."""
    if seq_lens is None:
        return None, None
    seq_lens = get_constant(seq_lens, params)
    if isinstance(seq_lens, tvm.ir.GenericConst):
        lengths = seq_lens.value.numpy().reshape(batch)
        if (lengths == seq_length).all():
            return None, None
        steps = [relax.const((t < lengths).reshape(batch, 1)) for t in range(seq_length)]
        return steps, relax.const((lengths > 0).reshape(batch, 1))
    lengths = bb.emit(relax.op.expand_dims(seq_lens, 1))
    dtype = seq_lens.ty.dtype
    steps = [bb.emit(relax.op.less(relax.const(t, dtype), lengths)) for t in range(seq_length)]
    return steps, bb.emit(relax.op.greater(lengths, relax.const(0, dtype)))


class _RecurrentLayer(OnnxOpConverter):
    """Shared import of the three recurrent ops; subclasses give the gate math.

    A subclass sets ``gates`` (blocks in ``W``/``R``), ``default_activations`` and
    ``cell_state``, and implements ``_direction_weights`` (per-direction tensors the
    step reads, and the bias folded into the input projection) and ``_step``.
    """

    gates: int
    default_activations: tuple[str, ...]
    cell_state = False

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x, w, r = inputs[0], inputs[1], inputs[2]
        b, seq_lens, initial_h = _input(inputs, 3), _input(inputs, 4), _input(inputs, 5)
        initial_c = _input(inputs, 6) if cls.cell_state else None
        layout = attr.get("layout", 0)
        if layout:
            x = bb.emit(relax.op.permute_dims(x, [1, 0, 2]))
            if initial_h is not None:
                initial_h = bb.emit(relax.op.permute_dims(initial_h, [1, 0, 2]))
            if initial_c is not None:
                initial_c = bb.emit(relax.op.permute_dims(initial_c, [1, 0, 2]))
        dtype = x.ty.dtype
        seq_length, batch, input_size = (int(s) for s in x.ty.shape)
        hidden = int(attr.get("hidden_size", 0)) or int(r.ty.shape[-1])
        direction = _text(attr.get("direction", b"forward"))
        if direction not in ("forward", "reverse", "bidirectional"):
            raise ValueError(f"{cls.__name__}: unknown direction {direction!r}")
        num_directions = 2 if direction == "bidirectional" else 1
        acts = _activations(attr, cls.default_activations, num_directions, dtype)
        clip = attr.get("clip")
        step_masks, nonempty = _step_masks(bb, seq_lens, params, seq_length, batch)
        flat_x = bb.emit(relax.op.reshape(x, [seq_length * batch, input_size]))

        ys, final_states = [], []
        for d in range(num_directions):
            w_d = _direction(bb, w, d)
            b_d = _direction(bb, b, d) if b is not None else None
            p_d = None
            if cls.cell_state and _input(inputs, 7) is not None:
                p_d = _direction(bb, inputs[7], d)
            weights, x_bias = cls._direction_weights(bb, _direction(bb, r, d), b_d, p_d, hidden, attr)
            projected = relax.op.matmul(flat_x, relax.op.permute_dims(w_d))
            if x_bias is not None:
                projected = relax.op.add(projected, x_bias)
            projected = bb.emit(relax.op.reshape(projected, [seq_length, batch, cls.gates * hidden]))
            steps = [bb.emit(relax.op.squeeze(s, axis=[0]))
                     for s in _split(bb, projected, seq_length, axis=0)]

            states = [_direction(bb, initial_h, d) if initial_h is not None
                      else relax.op.zeros((batch, hidden), dtype)]
            if cls.cell_state:
                states.append(_direction(bb, initial_c, d) if initial_c is not None
                              else relax.op.zeros((batch, hidden), dtype))
            outputs = [None] * seq_length
            order = range(seq_length - 1, -1, -1) if direction == "reverse" or d == 1 else range(seq_length)
            zero = relax.const(0.0, dtype)
            for t in order:
                new = cls._step(bb, steps[t], states, weights, acts[d], clip, hidden, attr)
                if step_masks is None:
                    outputs[t] = new[0]
                else:
                    outputs[t] = bb.emit(relax.op.where(step_masks[t], new[0], zero))
                    new = [bb.emit(relax.op.where(step_masks[t], n, s)) for n, s in zip(new, states)]
                states = new
            if nonempty is not None:
                states = [bb.emit(relax.op.where(nonempty, s, zero)) for s in states]
            ys.append(bb.emit(relax.op.stack(outputs, axis=0)))
            final_states.append(states)

        y = bb.emit(relax.op.stack(ys, axis=1))
        finals = [bb.emit(relax.op.stack([s[i] for s in final_states], axis=0))
                  for i in range(len(final_states[0]))]
        if layout:
            y = bb.emit(relax.op.permute_dims(y, [2, 0, 1, 3]))
            finals = [bb.emit(relax.op.permute_dims(s, [1, 0, 2])) for s in finals]
        return relax.Tuple([y, *finals])

    @classmethod
    def _clip(cls, x, clip, dtype):
        if clip is None:
            return x
        return relax.op.minimum(relax.op.maximum(x, relax.const(-clip, dtype)), relax.const(clip, dtype))


def _summed_bias(bb, b_d):
    """``Wb + Rb`` from one direction's ``B`` row (None without ``B``)."""
    if b_d is None:
        return None
    wb, rb = _split(bb, b_d, 2, axis=0)
    return relax.op.add(wb, rb)


@register_converter("RNN")
class RNN(_RecurrentLayer):
    """``Ht = f(Xt W^T + Ht-1 R^T + Wb + Rb)``."""

    gates = 1
    default_activations = ("tanh",)

    @classmethod
    def _direction_weights(cls, bb, r_d, b_d, p_d, hidden, attr):
        return bb.emit(relax.op.permute_dims(r_d)), _summed_bias(bb, b_d)

    @classmethod
    def _step(cls, bb, x_t, states, r_t, acts, clip, hidden, attr):
        dtype = x_t.ty.dtype
        pre = relax.op.add(x_t, relax.op.matmul(states[0], r_t))
        return [bb.emit(acts[0](cls._clip(pre, clip, dtype)))]


@register_converter("GRU")
class GRU(_RecurrentLayer):
    """Gates ``z, r, h``; ``linear_before_reset`` applies ``r`` after the recurrence matmul."""

    gates = 3
    default_activations = ("sigmoid", "tanh")

    @classmethod
    def _direction_weights(cls, bb, r_d, b_d, p_d, hidden, attr):
        r_zr, r_h = (bb.emit(relax.op.permute_dims(part)) for part in _split(bb, r_d, [2 * hidden], axis=0))
        bias = rb_h = None
        if b_d is not None:
            wb, rb = _split(bb, b_d, 2, axis=0)
            rb_zr, rb_h = _split(bb, rb, [2 * hidden], axis=0)
            if attr.get("linear_before_reset", 0):
                # Rbh sits inside the reset product, so only Rbz and Rbr fold into x.
                bias = relax.op.add(wb, relax.op.concat([rb_zr, relax.op.zeros_like(rb_h)], axis=0))
            else:
                bias = relax.op.add(wb, rb)
                rb_h = None
        return (r_zr, r_h, rb_h), bias

    @classmethod
    def _step(cls, bb, x_t, states, weights, acts, clip, hidden, attr):
        op = relax.op
        dtype = x_t.ty.dtype
        h_prev = states[0]
        r_zr, r_h, rb_h = weights
        x_zr, x_h = _split(bb, x_t, [2 * hidden], axis=1)
        zr = bb.emit(acts[0](cls._clip(op.add(x_zr, op.matmul(h_prev, r_zr)), clip, dtype)))
        z, r = _split(bb, zr, 2, axis=1)
        if attr.get("linear_before_reset", 0):
            recurrent = op.matmul(h_prev, r_h)
            if rb_h is not None:
                recurrent = op.add(recurrent, rb_h)
            pre = op.add(x_h, op.multiply(r, recurrent))
        else:
            pre = op.add(x_h, op.matmul(op.multiply(r, h_prev), r_h))
        h_cand = bb.emit(acts[1](cls._clip(pre, clip, dtype)))
        # (1 - z) * h~ + z * H = h~ + z * (H - h~)
        return [bb.emit(op.add(h_cand, op.multiply(z, op.subtract(h_prev, h_cand))))]


@register_converter("LSTM")
class LSTM(_RecurrentLayer):
    """Gates ``i, o, f, c`` with optional peepholes ``P = [Pi, Po, Pf]``."""

    gates = 4
    default_activations = ("sigmoid", "tanh", "tanh")
    cell_state = True

    @classmethod
    def _direction_weights(cls, bb, r_d, b_d, p_d, hidden, attr):
        bias = _summed_bias(bb, b_d)
        peepholes = _split(bb, p_d, 3, axis=0) if p_d is not None else None
        return (bb.emit(relax.op.permute_dims(r_d)), peepholes), bias

    @classmethod
    def _step(cls, bb, x_t, states, weights, acts, clip, hidden, attr):
        op = relax.op
        dtype = x_t.ty.dtype
        h_prev, c_prev = states
        r_t, peepholes = weights
        f_act, g_act, h_act = acts
        gates = bb.emit(op.add(x_t, op.matmul(h_prev, r_t)))
        i, o, f, c = _split(bb, gates, 4, axis=1)
        if peepholes is not None:
            p_i, p_o, p_f = peepholes
            i = op.add(i, op.multiply(p_i, c_prev))
            f = op.add(f, op.multiply(p_f, c_prev))
        i = bb.emit(f_act(cls._clip(i, clip, dtype)))
        if attr.get("input_forget", 0):
            f = op.subtract(relax.const(1.0, dtype), i)
        else:
            f = f_act(cls._clip(f, clip, dtype))
        c = g_act(cls._clip(c, clip, dtype))
        c_new = bb.emit(op.add(op.multiply(f, c_prev), op.multiply(i, c)))
        if peepholes is not None:
            o = op.add(o, op.multiply(p_o, c_new))
        o = f_act(cls._clip(o, clip, dtype))
        h_new = bb.emit(op.multiply(o, h_act(c_new)))
        return [h_new, c_new]
