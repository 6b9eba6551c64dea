"""State-space scan kernels: ONNX ``LinearAttention`` (all four update rules), Mamba-1's
selective scan, and the diagonal recurrence :mod:`edgecc.passes.ssm` finds in ``Scan`` loops,
as one fused kernel each.

``linear_attention`` keeps the state ``S[b, h]`` (``d_k x d_v``) in its output buffer
``present_state`` and updates it in place token by token: per token one pass over the rows
``i`` of ``S`` decays, updates and reads it (``o_j += q_i * S[i, j]`` for every query head of
the group), plus, for the delta rules, one pass computing ``S^T k`` first. Work on column ``j``
never reads another column, so the kernel vectorises over ``d_v`` (each loop over ``j`` is a
vector loop) and runs ``(batch, kv head)`` pairs in parallel. Decode (``T = 1``) is the same
kernel: one read of ``past_state``, one write of ``present_state``, nothing else touches the
state.

``linear_attention(..., chunk=C)`` is the chunked prefill form for the ``linear`` and
per-head ``gated`` rules (Mamba-2's SSD): within a chunk of ``C`` tokens the output is
matmul-shaped, ``O = ((Q K^T) * L) V + diag(pre) Q S``, with ``L[t, s]`` the product of the
decays after token ``s`` up to ``t`` (0 for ``s > t``) and ``pre[t]`` those since the chunk
began, and the state moves once a chunk: ``S <- pre[C-1] S + (K * post)^T V``. Products of
decays only (no divisions), so no over- or underflow. ``C`` comes from the node's
``chunk_size`` (:func:`chunk_for`).

``selective_scan`` is Mamba-1's recurrence (:mod:`edgecc.ssm` documents it): per channel a
diagonal state of ``N`` values; the kernel vectorises over channels, keeps the ``N``
state vectors of a channel block in registers across the whole sequence, and runs
``(batch, channel block)`` in parallel.

On CUDA the same kernels run with one thread block per ``(batch, head)`` and one thread per
state column (selective scan: per channel), each thread's column of the state in registers.
On RISC-V the vector loops are VLEN-agnostic: TVM strip-mines a vector loop without calls into
``<vscale x 4 x float>`` vectors, and :func:`specialise` gives the selective scan plain loops
for LLVM's loop vectorizer, which does the same.
"""

from __future__ import annotations

import json
import math

import tvm
from tvm.script import tirx as T

BUILD_ATTR = "edgecc.ssm_build"  # on the kernels: how to build them again (see rebuild)
SSM_ATTR = "edgecc.ssm"  # on the kernels: which one ("linear_attention", ...); the schedule rule reads it
RULES = ("linear", "gated", "delta", "gated_delta")


def fast_exp(x):
    """float32 ``exp(x)`` as a polynomial (Cephes' ``expf``: ``2^n * p(r)``, within 2 ulp), so
    that it vectorises and needs no libm call; inputs clamped to float32's finite range."""
    x = T.max(T.min(x, T.float32(88.3762626647949)), T.float32(-87.3365447504019))
    n = T.floor(x * T.float32(1.44269504088896341) + T.float32(0.5))
    r = x - n * T.float32(0.693359375) + n * T.float32(2.12194440e-4)
    p = T.float32(1.9875691500e-4)
    for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = p * r + T.float32(c)
    p = p * r * r + r + T.float32(1)
    return p * T.reinterpret("float32", T.shift_left(T.Cast("int32", n) + 127, 23))


class LinearAttentionSpec:
    """Static facts of one ``LinearAttention`` call: heads, head sizes, rule, which optional
    inputs it has and their shapes' last dims."""

    def __init__(self, q_heads: int, kv_heads: int, d_k: int, d_v: int, rule: str, scale: float,
                 decay: str = "none", beta: str = "none", past: bool = False, chunk: int = 0,
                 batch: int | None = None, steps: int | None = None):
        assert rule in RULES and q_heads % kv_heads == 0
        self.q_heads, self.kv_heads, self.d_k, self.d_v = q_heads, kv_heads, d_k, d_v
        self.rule, self.decay, self.beta, self.past = rule, decay, beta, past
        self.chunk = chunk  # tokens a pass over the state on CPUs; 0: chunk_for's choice
        self.batch, self.steps = batch, steps  # static shapes of the call; None: symbolic
        self.args = dict(q_heads=q_heads, kv_heads=kv_heads, d_k=d_k, d_v=d_v, rule=rule, scale=scale, decay=decay,
                         beta=beta, past=past, chunk=chunk, batch=batch, steps=steps)
        self.scale = scale if scale else 1.0 / math.sqrt(d_k)
        self.group = q_heads // kv_heads

    @property
    def decay_width(self) -> int:
        return {"none": 1, "head": self.kv_heads, "key": self.kv_heads * self.d_k}[self.decay]

    @property
    def beta_width(self) -> int:
        return {"none": 1, "head": self.kv_heads, "one": 1}[self.beta]


def _threads(extent):
    return T.thread_binding(extent, thread="threadIdx.x")


def _built(func, kind: str, **args) -> tvm.tirx.PrimFunc:
    """``func`` marked opaque (nothing fuses into a scan), with how to build it again for
    another device (:func:`rebuild`)."""
    return func.with_attr("op_pattern", 8).with_attr(BUILD_ATTR, json.dumps({"kind": kind, "args": args}))


def rebuild(func: tvm.tirx.PrimFunc, gpu: bool) -> tvm.tirx.PrimFunc:
    """The scan kernel ``func`` built again for the CPU or (``gpu``) for CUDA threads."""
    built = json.loads(str(func.attrs[BUILD_ATTR]))
    kind, args = built["kind"], built["args"]
    if kind == "linear_attention":
        return linear_attention(LinearAttentionSpec(**args), gpu=gpu)
    if kind == "selective_scan":
        return selective_scan(SelectiveScanSpec(**args), gpu=gpu)
    return diagonal_scan(**args, gpu=gpu)


MAX_CHUNK = 8  # a chunk's accumulators (group * C vectors a column block) fit the registers up to here


def _chunkable(spec: LinearAttentionSpec, lanes: int) -> bool:
    return spec.rule in ("linear", "gated") and spec.decay != "key" and spec.d_v % lanes == 0


def chunk_for(spec: LinearAttentionSpec, lanes: int) -> int:
    """The chunk a CPU kernel takes: ``spec.chunk`` (``LinearAttention``'s ``chunk_size`` when
    set on the node, up to :data:`MAX_CHUNK`, fewer with GQA so the accumulators fit) for
    ``linear`` and per-head ``gated``; else 1, token by token. 1 is also the default: with the
    state in L1 (64 x 64 floats: 16 KiB) the token-by-token kernel measures as fast as chunks
    of 4 or 8 on AVX-512 (``bench/ssm.py --chunks``), and the delta rules and per-key decay have
    no chunked form here."""
    if not _chunkable(spec, lanes) or not spec.chunk:
        return 1
    return max(1, min(MAX_CHUNK, spec.chunk, MAX_CHUNK * 2 // spec.group))


def linear_attention(spec: LinearAttentionSpec, gpu: bool = False, chunk: int = 1,
                     width: int = 0) -> tvm.tirx.PrimFunc:
    """The kernel: ``(query, key, value, past_state, decay, beta) -> (output, present_state)``,
    float32, batch and ``T`` symbolic. Absent optional inputs are passed as one-element
    tensors ``[1, 1, 1(, 1)]`` (the kernel does not read them). ``chunk`` > 1 (``linear`` and
    per-head ``gated`` only) takes ``chunk`` tokens a pass over the state, the chunked form,
    ``width`` columns of it at a time; the last ``T mod chunk`` tokens go token by token."""
    hq, hk, dk, dv, group = spec.q_heads, spec.kv_heads, spec.d_k, spec.d_v, spec.group
    lanes, scope = (_threads, "local") if gpu else (T.vectorized, "global")
    gated, delta = spec.rule in ("gated", "gated_delta"), spec.rule in ("delta", "gated_delta")
    key_decay, has_past, head_beta = spec.decay == "key", spec.past, spec.beta == "head"
    assert chunk == 1 or (not delta and not key_decay and not gpu)
    chunked = chunk > 1
    scale = float(spec.scale)
    i64 = T.int64
    hq_, hk_, dk_, dv_, g_ = i64(hq), i64(hk), i64(dk), i64(dv), i64(group)
    dw_, bw_, c_ = i64(spec.decay_width), i64(spec.beta_width), i64(chunk)
    w_ = i64(width if width and dv % width == 0 else dv)  # chunked: columns a pass (a vector)
    one = i64(1)
    @T.macro(hygienic=False)
    def token(t):
        """One step of the recurrence: decay, (delta: correct the value), update, read."""
        if gated and key_decay:
            for i in range(dk_):
                e[i] = fast_exp(g[vb, t, vh * dk_ + i])
        else:
            e[0] = fast_exp(g[vb, t, vh]) if gated else T.float32(1)
            for i in range(dk_ - 1):
                e[i + 1] = e[0]
        if delta:
            for j in lanes(dv_):
                u[j] = T.float32(0)
            for i in range(dk_):
                for j in lanes(dv_):
                    u[j] = u[j] + state[vb, vh, i, j] * (e[i] * k[vb, t, vh * dk_ + i])
            for j in lanes(dv_):
                u[j] = beta[vb, t, vh if head_beta else 0] * (v[vb, t, vh * dv_ + j] - u[j])
        else:
            for j in lanes(dv_):
                u[j] = v[vb, t, vh * dv_ + j]
        for r in range(g_):
            for j in lanes(dv_):
                acc[r, j] = T.float32(0)
        for i in range(dk_):
            for j in lanes(dv_):
                state[vb, vh, i, j] = e[i] * state[vb, vh, i, j] + k[vb, t, vh * dk_ + i] * u[j]
            for r in range(g_):
                for j in lanes(dv_):
                    acc[r, j] = acc[r, j] + q[vb, t, (vh * g_ + r) * dk_ + i] * state[vb, vh, i, j]
        for r in range(g_):
            for j in lanes(dv_):
                o[vb, t, (vh * g_ + r) * dv_ + j] = acc[r, j] * T.float32(scale)

    @T.macro(hygienic=False)
    def chunk_of(t0):
        """``C`` tokens from ``t0``: decays ``a``, their running products ``pre[t] = a_0..a_t`` and
        ``post[s] = a_{s+1}..a_{C-1}``; then per state row, every token's read of the state as it
        was before the chunk and the state's one update; then the tokens' reads of each other."""
        for t in range(c_):
            a[t] = fast_exp(g[vb, t0 + t, vh]) if gated else T.float32(1)
        pre[0] = a[0]
        for t in range(c_ - 1):
            pre[t + 1] = pre[t] * a[t + 1]
        post[c_ - 1] = T.float32(1)
        for t in range(c_ - 1):
            post[c_ - 2 - t] = post[c_ - 1 - t] * a[c_ - 1 - t]
        for t, s in T.grid(c_, c_):  # L[t, s]: the decay from token s to token t (0 above the diagonal)
            if s > t:
                decay_ts[t, s] = T.float32(0)
            else:
                if s == t:
                    decay_ts[t, s] = T.float32(1)
                else:
                    decay_ts[t, s] = decay_ts[t - 1, s] * a[t]
        for i, s in T.grid(dk_, c_):
            kt[i, s] = k[vb, t0 + s, vh * dk_ + i]
        for r, t in T.grid(g_, c_):
            for s in T.vectorized(c_):
                coef[r, t, s] = T.float32(0)
        for i in range(dk_):  # the chunk's query-key products, key index in vector lanes
            for r in T.unroll(g_):
                for t in T.unroll(c_):
                    for s in T.vectorized(c_):
                        coef[r, t, s] = coef[r, t, s] + q[vb, t0 + t, (vh * g_ + r) * dk_ + i] * kt[i, s]
        for r, t in T.grid(g_, c_):
            for s in T.vectorized(c_):
                coef[r, t, s] = coef[r, t, s] * decay_ts[t, s]
        for jb in range(dv_ // w_):  # a column block: its accumulators stay in registers
            for s in range(c_):  # values scaled by their decay until the chunk ends
                for j in T.vectorized(w_):
                    vp[s, j] = post[s] * v[vb, t0 + s, vh * dv_ + jb * w_ + j]
            for r, t in T.grid(g_, c_):
                for j in T.vectorized(w_):
                    acc_c[r, t, j] = T.float32(0)
            for i in range(dk_):
                for j in T.vectorized(w_):
                    old[j] = state[vb, vh, i, jb * w_ + j]
                for r in T.unroll(g_):
                    for t in T.unroll(c_):
                        for j in T.vectorized(w_):
                            acc_c[r, t, j] = acc_c[r, t, j] + q[vb, t0 + t, (vh * g_ + r) * dk_ + i] * old[j]
                for j in T.vectorized(w_):
                    old[j] = pre[c_ - 1] * old[j]
                for s in T.unroll(c_):
                    for j in T.vectorized(w_):
                        old[j] = old[j] + k[vb, t0 + s, vh * dk_ + i] * vp[s, j]
                for j in T.vectorized(w_):
                    state[vb, vh, i, jb * w_ + j] = old[j]
            for r in T.unroll(g_):
                for t in T.unroll(c_):
                    for j in T.vectorized(w_):  # the decay since the chunk began, on the old state's part
                        acc_c[r, t, j] = acc_c[r, t, j] * pre[t]
                    for s in T.unroll(c_):
                        for j in T.vectorized(w_):
                            acc_c[r, t, j] = acc_c[r, t, j] + coef[r, t, s] * v[vb, t0 + s, vh * dv_ + jb * w_ + j]
            for r, t in T.grid(g_, c_):
                for j in T.vectorized(w_):
                    o[vb, t0 + t, (vh * g_ + r) * dv_ + jb * w_ + j] = acc_c[r, t, j] * T.float32(scale)

    @T.prim_func(private=True, s_tir=True)
    def linear_attention(q_h: T.handle, k_h: T.handle, v_h: T.handle, past_h: T.handle, g_h: T.handle,
                         beta_h: T.handle, o_h: T.handle, state_h: T.handle):
        b_, t_ = T.int64(), T.int64()
        q = T.match_buffer(q_h, (b_, t_, hq_ * dk_), "float32")
        k = T.match_buffer(k_h, (b_, t_, hk_ * dk_), "float32")
        v = T.match_buffer(v_h, (b_, t_, hk_ * dv_), "float32")
        g = T.match_buffer(g_h, (b_, t_, dw_) if gated else (one, one, one), "float32")
        beta = T.match_buffer(beta_h, (b_, t_, bw_) if delta else (one, one, one), "float32")
        o = T.match_buffer(o_h, (b_, t_, hq_ * dv_), "float32")
        state = T.match_buffer(state_h, (b_, hk_, dk_, dv_), "float32")
        past = T.match_buffer(past_h, (b_, hk_, dk_, dv_) if has_past else (one, one, one, one), "float32")
        for bi, hi in T.grid(b_, hk_):
            with T.sblock("linear_attention"):
                vb, vh = T.axis.remap("SS", [bi, hi])
                T.reads(q[vb, 0:t_, vh * g_ * dk_:(vh + 1) * g_ * dk_], k[vb, 0:t_, vh * dk_:(vh + 1) * dk_],
                        v[vb, 0:t_, vh * dv_:(vh + 1) * dv_], past[vb, vh, 0:dk_, 0:dv_] if has_past else past[0, 0, 0, 0],
                        g[vb, 0:t_, 0:dw_] if gated else g[0, 0, 0], beta[vb, 0:t_, 0:bw_] if delta else beta[0, 0, 0])
                T.writes(o[vb, 0:t_, vh * g_ * dv_:(vh + 1) * g_ * dv_], state[vb, vh, 0:dk_, 0:dv_])
                # (names the macros use, recorded here so the parser sees them)
                T.sblock_attr({SSM_ATTR: "linear_attention", "edgecc.scale": scale,
                               "edgecc.flags": [key_decay, head_beta]})
                e = T.sblock_alloc_buffer((dk_,), "float32", scope=scope)
                u = T.sblock_alloc_buffer((dv_,), "float32", scope=scope)
                acc = T.sblock_alloc_buffer((g_, dv_), "float32", scope=scope)
                a = T.sblock_alloc_buffer((c_,), "float32", scope=scope)
                pre = T.sblock_alloc_buffer((c_,), "float32", scope=scope)
                post = T.sblock_alloc_buffer((c_,), "float32", scope=scope)
                coef = T.sblock_alloc_buffer((g_, c_, c_), "float32", scope=scope)
                old = T.sblock_alloc_buffer((w_,), "float32", scope=scope)
                acc_c = T.sblock_alloc_buffer((g_, c_, w_), "float32", scope=scope)
                vp = T.sblock_alloc_buffer((c_, w_), "float32", scope=scope)
                kt = T.sblock_alloc_buffer((dk_, c_), "float32", scope=scope)
                decay_ts = T.sblock_alloc_buffer((c_, c_), "float32", scope=scope)
                for i in range(dk_):
                    for j in lanes(dv_):
                        if has_past:
                            state[vb, vh, i, j] = past[vb, vh, i, j]
                        else:
                            state[vb, vh, i, j] = T.float32(0)
                if chunked:
                    for n in range(t_ // c_):
                        chunk_of(n * c_)
                    for t in range(t_ - t_ // c_ * c_):
                        token(t_ // c_ * c_ + t)
                else:
                    for t in range(t_):
                        token(t)

    return _at_shape(_built(linear_attention, "linear_attention", **spec.args), spec.batch, spec.steps)


def _at_shape(func: tvm.tirx.PrimFunc, batch: int | None, steps: int | None) -> tvm.tirx.PrimFunc:
    """``func`` with its symbolic batch (``b_``) and time (``t_``) bound where given."""
    values = {"b_": batch, "t_": steps}
    if all(v is None for v in values.values()):
        return func
    buffers = {}
    for param in func.params:
        shape = [tvm.tirx.IntImm("int64", values[d.name]) if isinstance(d, tvm.tirx.Var) and
                 values.get(d.name) is not None else d for d in param.ty.shape]
        buffers[param] = tvm.tirx.decl_buffer(shape, param.ty.dtype, name=param.name)
    return func.specialize(buffers)


CHUNKS = (1, 2, 4, 8)  # what tuning measures, where the kernel has a chunked form


def specialise(func: tvm.tirx.PrimFunc, lanes: int, chunk: int | None = None,
               scalable: bool = False) -> tvm.tirx.PrimFunc:
    """A linear-attention kernel rebuilt in the chunked form that suits ``lanes``-wide vectors
    (``chunk``, or :func:`chunk_for`'s choice); with ``scalable`` (RVV), a selective scan
    rebuilt with VLEN-agnostic loops; other scan kernels as they are."""
    built = json.loads(str(func.attrs[BUILD_ATTR]))
    if built["kind"] == "selective_scan" and scalable:
        return selective_scan(SelectiveScanSpec(**built["args"]), scalable=True)
    if built["kind"] != "linear_attention":
        return func
    spec = LinearAttentionSpec(**built["args"])
    if chunk is None:
        chunk = chunk_for(spec, lanes)
        if chunk == 1:
            return func
    spec = LinearAttentionSpec(**{**built["args"], "chunk": chunk})  # the build attribute names the chunk
    if chunk == 1:
        return linear_attention(spec)
    return linear_attention(spec, chunk=chunk, width=lanes).with_attr("edgecc.chunk", chunk)


def chunk_variants(func: tvm.tirx.PrimFunc, lanes: int) -> dict[int, tvm.tirx.PrimFunc]:
    """``{chunk: kernel}``: what tuning measures of a linear-attention kernel with a chunked
    form and a static shape (a tuned chunk is for one sequence length); else empty."""
    built = json.loads(str((func.attrs or {}).get(BUILD_ATTR, "{}")) or "{}")
    if built.get("kind") != "linear_attention":
        return {}
    spec = LinearAttentionSpec(**built["args"])
    if not _chunkable(spec, lanes) or spec.steps is None or spec.batch is None:
        return {}
    return {c: specialise(func, lanes, c) for c in CHUNKS if c <= max(1, min(MAX_CHUNK, MAX_CHUNK * 2 // spec.group))}


def kernel_of(sch, attr: str = SSM_ATTR) -> tuple | None:
    """``(block, kind)`` of the kernel block annotated ``attr`` (a scan's by default), or None."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        kind = sch.get(block).annotations.get(attr)
        if kind is not None:
            return block, str(kind)
    return None


def parallel_outer(sch, block) -> None:
    """A hand-written kernel's independent outer loops (its block's) fused and run in parallel."""
    loops = sch.get_loops(block)
    sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])


def schedule(sch, block, kind: str) -> str:
    """CPU: the kernel's independent (batch, head / channel block) loops fused and run in
    parallel; everything inside is written vectorised already."""
    parallel_outer(sch, block)
    chunk = (sch.mod["main"].attrs or {}).get("edgecc.chunk")
    return f"scan[{kind}]" + (f" chunks of {int(chunk)}" if chunk else "")


def fast_exp2(x):
    """float32 ``2 ** x``: ``2^n * p(r)`` with ``n`` the nearest integer (``llvm.roundeven``) and
    ``p`` a degree-5 minimax polynomial of ``2^r`` on ``[-1/2, 1/2]`` (relative error 7.5e-8;
    2.3e-7 evaluated in float32). Cheaper than :func:`fast_exp` where the exponent can be
    pre-scaled by ``log2(e)`` (a constant operand)."""
    x = T.max(T.min(x, T.float32(127.0)), T.float32(-126.0))
    n = T.call_llvm_pure_intrin("float32", "llvm.roundeven", x)  # one instruction (x86 vrndscaleps)
    r = x - n
    p = T.float32(1.3276500e-3)
    for c in (9.6755400e-3, 5.5507131e-2, 2.4022120e-1, 6.9314694e-1, 1.0000001):
        p = p * r + T.float32(c)
    # 2^n's bits, (n + 127) << 23, computed exactly in float32 (a multiply-add, then a conversion)
    return p * T.reinterpret("float32", T.Cast("int32", n * T.float32(8388608.0) + T.float32(1065353216.0)))


def fast_log(x):
    """float32 ``log(x)`` for ``x > 0`` as a polynomial (Cephes' ``logf``), vectorisable."""
    bits = T.reinterpret("int32", x)
    exponent = T.shift_right(bits, 23) - 126
    m = T.reinterpret("float32", T.bitwise_or(T.bitwise_and(bits, 0x007FFFFF), 0x3F000000))  # [0.5, 1)
    small = m < T.float32(0.707106781186547524)
    e = T.Cast("float32", exponent) - T.Select(small, T.float32(1), T.float32(0))
    m = T.Select(small, m + m, m) - T.float32(1)
    z = m * m
    p = T.float32(7.0376836292e-2)
    for c in (-1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1,
              2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1):
        p = p * m + T.float32(c)
    y = m * z * p + e * T.float32(-2.12194440e-4) - T.float32(0.5) * z
    return m + y + e * T.float32(0.693359375)


def softplus(x):
    """``log(1 + exp(x))``, exact to float32 for large ``x``."""
    return T.Select(x > T.float32(20), x, fast_log(T.float32(1) + fast_exp(x)))


class SelectiveScanSpec:
    """Static facts of one ``SelectiveScan`` call: channels, state size, optional inputs."""

    def __init__(self, channels: int, state: int, skip: bool, gate: bool, delta_bias: bool,
                 initial: bool, delta_softplus: bool):
        self.channels, self.state = channels, state
        self.skip, self.gate, self.delta_bias, self.initial = skip, gate, delta_bias, initial
        self.delta_softplus = delta_softplus
        self.args = dict(channels=channels, state=state, skip=skip, gate=gate, delta_bias=delta_bias,
                         initial=initial, delta_softplus=delta_softplus)


LOG2E = 1.4426950408889634
BLOCK = 16  # channels a selective-scan block: one 512-bit vector, four NEON registers


def selective_scan(spec: SelectiveScanSpec, gpu: bool = False, scalable: bool = False) -> tvm.tirx.PrimFunc:
    """``(x, delta, A, B, C, D, z, delta_bias, initial_state) -> (y, final_state)``, float32,
    batch and length symbolic; absent optional inputs passed as one-element tensors.
    ``scalable`` (RVV): the channel loops are left for LLVM's loop vectorizer, which makes them
    VLEN-agnostic (TVM turns a vector loop into one only when it calls nothing, and
    ``fast_exp2`` is calls)."""
    d, n = spec.channels, spec.state
    width = BLOCK if d % BLOCK == 0 else 1
    skip, gate, bias, initial, soft = spec.skip, spec.gate, spec.delta_bias, spec.initial, spec.delta_softplus
    lanes, scope = (_threads, "local") if gpu else (T.serial if scalable else T.vectorized, "global")
    state_loop = T.unroll if n <= 16 else T.serial
    i64 = T.int64
    d_, n_, w_, one = i64(d), i64(n), i64(width), i64(1)

    @T.prim_func(private=True, s_tir=True)
    def selective_scan(x_h: T.handle, delta_h: T.handle, a: T.Buffer((d_, n_), "float32"), b_h: T.handle,
                       c_h: T.handle, skip_h: T.handle, z_h: T.handle, bias_h: T.handle, init_h: T.handle,
                       y_h: T.handle, final_h: T.handle):
        b_, t_ = T.int64(), T.int64()
        x = T.match_buffer(x_h, (b_, t_, d_), "float32")
        delta = T.match_buffer(delta_h, (b_, t_, d_), "float32")
        bm = T.match_buffer(b_h, (b_, t_, n_), "float32")
        cm = T.match_buffer(c_h, (b_, t_, n_), "float32")
        dskip = T.match_buffer(skip_h, (d_,) if skip else (one,), "float32")
        z = T.match_buffer(z_h, (b_, t_, d_) if gate else (one, one, one), "float32")
        dbias = T.match_buffer(bias_h, (d_,) if bias else (one,), "float32")
        init = T.match_buffer(init_h, (b_, d_, n_) if initial else (one, one, one), "float32")
        y = T.match_buffer(y_h, (b_, t_, d_), "float32")
        final = T.match_buffer(final_h, (b_, d_, n_), "float32")
        for bi, blk in T.grid(b_, d_ // w_):
            with T.sblock("selective_scan"):
                vb, vd = T.axis.remap("SS", [bi, blk])
                T.reads(x[vb, 0:t_, vd * w_:vd * w_ + w_], delta[vb, 0:t_, vd * w_:vd * w_ + w_],
                        a[vd * w_:vd * w_ + w_, 0:n_], bm[vb, 0:t_, 0:n_], cm[vb, 0:t_, 0:n_],
                        dskip[vd * w_:vd * w_ + w_] if skip else dskip[0],
                        z[vb, 0:t_, vd * w_:vd * w_ + w_] if gate else z[0, 0, 0],
                        dbias[vd * w_:vd * w_ + w_] if bias else dbias[0],
                        init[vb, vd * w_:vd * w_ + w_, 0:n_] if initial else init[0, 0, 0])
                T.writes(y[vb, 0:t_, vd * w_:vd * w_ + w_], final[vb, vd * w_:vd * w_ + w_, 0:n_])
                T.sblock_attr({SSM_ATTR: "selective_scan"})
                h = T.sblock_alloc_buffer((n_, w_), "float32", scope=scope)
                at = T.sblock_alloc_buffer((n_, w_), "float32", scope=scope)  # A transposed: lanes are channels
                dt = T.sblock_alloc_buffer((w_,), "float32", scope=scope)
                dx = T.sblock_alloc_buffer((w_,), "float32", scope=scope)
                acc = T.sblock_alloc_buffer((w_,), "float32", scope=scope)
                for s in state_loop(n_):
                    for c in lanes(w_):
                        at[s, c] = a[vd * w_ + c, s] * T.float32(LOG2E)  # exp(dt A) = 2^(dt A log2 e)
                        if initial:
                            h[s, c] = init[vb, vd * w_ + c, s]
                        else:
                            h[s, c] = T.float32(0)
                for t in range(t_):
                    for c in lanes(w_):
                        if bias:
                            dt[c] = delta[vb, t, vd * w_ + c] + dbias[vd * w_ + c]
                        else:
                            dt[c] = delta[vb, t, vd * w_ + c]
                        if soft:
                            dt[c] = softplus(dt[c])
                        dx[c] = dt[c] * x[vb, t, vd * w_ + c]
                        if skip:
                            acc[c] = dskip[vd * w_ + c] * x[vb, t, vd * w_ + c]
                        else:
                            acc[c] = T.float32(0)
                    for s in state_loop(n_):  # unrolled (N <= 16): the state stays in registers
                        for c in lanes(w_):
                            h[s, c] = fast_exp2(dt[c] * at[s, c]) * h[s, c] + dx[c] * bm[vb, t, s]
                            acc[c] = acc[c] + cm[vb, t, s] * h[s, c]
                    for c in lanes(w_):
                        if gate:
                            y[vb, t, vd * w_ + c] = acc[c] * z[vb, t, vd * w_ + c] / (
                                T.float32(1) + fast_exp(T.float32(0) - z[vb, t, vd * w_ + c]))
                        else:
                            y[vb, t, vd * w_ + c] = acc[c]
                for s in state_loop(n_):
                    for c in lanes(w_):
                        final[vb, vd * w_ + c, s] = h[s, c]

    return _built(selective_scan, "selective_scan", **spec.args)


def diagonal_scan(channels: int, state: int, gpu: bool = False) -> tvm.tirx.PrimFunc:
    """``(h0 [D, N], a [L, D, N], b [L, D, N], c [L, N]) -> (h_last [D, N], y [L, D])`` for
    ``h_t = a_t * h_{t-1} + b_t``, ``y_t = h_t @ c_t``: a diagonal linear recurrence as an
    exporter writes Mamba's scan in an ONNX ``Scan`` (:mod:`edgecc.passes.ssm` recognises it).
    ``L`` symbolic; blocks of channels in parallel, each step reading a block's ``a``/``b`` rows
    contiguously, vectorised over ``N``."""
    i64 = T.int64
    d_, n_ = i64(channels), i64(state)

    width = BLOCK if channels % BLOCK == 0 else 1
    w_ = i64(width)
    # The readout's horizontal sum over N as a tree of vector adds (N a power of 2, up to 256):
    # level k adds the upper half h_k of what is left onto the lower; 0 marks an unused level.
    tree = state & (state - 1) == 0 and state <= 256 and not gpu
    chans, lanes, scope = (_threads, T.serial, "local") if gpu else (T.serial, T.vectorized, "global")
    h1, h2, h3, h4, h5, h6, h7, h8 = ([state >> k if tree and state >> k else 0 for k in range(1, 9)])

    @T.macro(hygienic=False)
    def fold(half):
        for s in T.vectorized(half):
            prod[s] = prod[s] + prod[s + half]

    @T.prim_func(private=True, s_tir=True)
    def diagonal_scan(h0: T.Buffer((d_, n_), "float32"), a_h: T.handle, b_h: T.handle, c_h: T.handle,
                      last: T.Buffer((d_, n_), "float32"), y_h: T.handle):
        t_ = T.int64()
        a = T.match_buffer(a_h, (t_, d_, n_), "float32")
        b = T.match_buffer(b_h, (t_, d_, n_), "float32")
        c = T.match_buffer(c_h, (t_, n_), "float32")
        y = T.match_buffer(y_h, (t_, d_), "float32")
        for blk in range(d_ // w_):
            with T.sblock("diagonal_scan"):
                vd = T.axis.spatial(d_ // w_, blk)
                T.reads(h0[vd * w_:vd * w_ + w_, 0:n_], a[0:t_, vd * w_:vd * w_ + w_, 0:n_],
                        b[0:t_, vd * w_:vd * w_ + w_, 0:n_], c[0:t_, 0:n_])
                T.writes(last[vd * w_:vd * w_ + w_, 0:n_], y[0:t_, vd * w_:vd * w_ + w_])
                T.sblock_attr({SSM_ATTR: "diagonal_scan"})
                h = T.sblock_alloc_buffer((w_, n_), "float32", scope=scope)
                prod = T.sblock_alloc_buffer((n_,), "float32", scope=scope)
                for dd in chans(w_):
                    for s in lanes(n_):
                        h[dd, s] = h0[vd * w_ + dd, s]
                for t in range(t_):
                    for dd in chans(w_):
                        for s in lanes(n_):
                            h[dd, s] = a[t, vd * w_ + dd, s] * h[dd, s] + b[t, vd * w_ + dd, s]
                            prod[s] = h[dd, s] * c[t, s]
                        if tree:
                            if h1 > 0:
                                fold(h1)
                            if h2 > 0:
                                fold(h2)
                            if h3 > 0:
                                fold(h3)
                            if h4 > 0:
                                fold(h4)
                            if h5 > 0:
                                fold(h5)
                            if h6 > 0:
                                fold(h6)
                            if h7 > 0:
                                fold(h7)
                            if h8 > 0:
                                fold(h8)
                            y[t, vd * w_ + dd] = prod[0]
                        else:
                            y[t, vd * w_ + dd] = T.float32(0)
                            for s in range(n_):
                                y[t, vd * w_ + dd] = y[t, vd * w_ + dd] + prod[s]
                for dd in chans(w_):
                    for s in lanes(n_):
                        last[vd * w_ + dd, s] = h[dd, s]

    return _built(diagonal_scan, "diagonal_scan", channels=channels, state=state)


def schedule_gpu(func: tvm.tirx.PrimFunc) -> tuple[tvm.tirx.PrimFunc, str]:
    """CUDA: the kernel rebuilt with its lane loops on threads (one thread per state column;
    selective scan: per channel; diagonal scan: per channel of a block), working arrays in
    registers, and its (batch, head / channel block) loops fused onto thread blocks."""
    from tvm.s_tir import Schedule

    sch = Schedule(rebuild(func, gpu=True))
    block, kind = kernel_of(sch)
    loops = sch.get_loops(block)
    sch.bind(sch.fuse(*loops) if len(loops) > 1 else loops[0], "blockIdx.x")
    return sch.mod["main"], f"scan[{kind}] (CUDA: a thread block per head / channel block)"
