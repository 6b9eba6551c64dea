"""Converters for numeric text-feature ops (token ids in, counts out).

- ``TfIdfVectorizer`` on integer token ids (``pool_int64s``): each pool n-gram's
  count is a sum over shifted slices of the input compared with the n-gram's ids,
  all known at import; string pools raise ``NotImplementedError`` (TVM has no
  string tensors).
"""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

from .converters import register_converter
from .ops import _dtype, _shape
from .vision import _tensor, _text


def tfidf_pool_ngrams(pool: list[int], ngram_counts: list[int], ngram_indexes: list[int],
                      min_gram_length: int, max_gram_length: int) -> dict[tuple[int, ...], int]:
    """The pool's n-grams of the counted lengths, each with its output column.

    n-grams are numbered in pool order across all lengths (those outside
    ``[min_gram_length, max_gram_length]`` keep their numbers but are not counted);
    the n-th takes ``ngram_indexes[n]``. A repeated n-gram keeps its last number,
    as the spec's reference does.
    """
    grams: dict[tuple[int, ...], int] = {}
    number = 0
    for i, start in enumerate(ngram_counts):
        size = i + 1
        end = ngram_counts[i + 1] if i + 1 < len(ngram_counts) else len(pool)
        for j in range((end - start) // size):
            if min_gram_length <= size <= max_gram_length:
                grams[tuple(pool[start + j * size:start + (j + 1) * size])] = int(ngram_indexes[number])
            number += 1
    return grams


def _representable(gram: tuple[int, ...], dtype: str) -> bool:
    info = np.iinfo(dtype)
    return all(info.min <= v <= info.max for v in gram)


@register_converter("TfIdfVectorizer")
class TfIdfVectorizer(OnnxOpConverter):
    """Counts of the pool's n-grams per row, then the ``TF``/``IDF``/``TFIDF`` weighting.

    An n-gram of length n > 1 is counted at every skip distance 1..``max_skip_count``+1
    (its items that far apart); a unigram once. For each length and distance the
    input's n shifted slices are compared with every pool n-gram of that length at
    once ([rows, starts, n-grams]) and the matches summed over the starts.
    """

    @classmethod
    def _impl_v9(cls, bb, inputs, attr, params):
        if attr.get("pool_strings"):
            raise NotImplementedError("TfIdfVectorizer with pool_strings is not supported (TVM has no "
                                      "string tensors); map the tokens to integer ids and use pool_int64s")
        x = inputs[0]
        dtype = _dtype(x)
        if not dtype.startswith("int"):
            raise NotImplementedError(f"TfIdfVectorizer on {dtype} input: only int32/int64 token ids "
                                      "are supported")
        shape = _shape(x)
        if len(shape) not in (1, 2):
            raise ValueError(f"TfIdfVectorizer input must be [C] or [B, C], not {shape}")
        mode = _text(attr.get("mode", "TF"))
        if mode not in ("TF", "IDF", "TFIDF"):
            raise ValueError(f"TfIdfVectorizer: unknown mode {mode!r}")
        min_len, max_len = int(attr["min_gram_length"]), int(attr["max_gram_length"])
        max_skip = int(attr["max_skip_count"])
        ngram_indexes = list(attr["ngram_indexes"])
        out_size = max(ngram_indexes) + 1
        grams = tfidf_pool_ngrams(list(attr.get("pool_int64s", [])), list(attr["ngram_counts"]),
                                  ngram_indexes, min_len, max_len)
        # An id the input's dtype cannot hold never matches (and must not wrap round).
        grams = {g: col for g, col in grams.items() if _representable(g, dtype)}

        rows, length = ([1] + shape)[-2:]
        op = relax.op
        data = bb.normalize(op.reshape(x, [rows, length]))
        counts = []  # [rows, n-grams of one length], float32
        columns = []
        for size in sorted({len(g) for g in grams}):
            of_size = [g for g in grams if len(g) == size]
            pool = np.array(of_size, dtype).reshape(len(of_size), size)
            count = None
            for skip in range(1, (max_skip + 1 if size > 1 else 1) + 1):
                starts = length - (size - 1) * skip
                if starts <= 0:
                    break
                match = None
                for k in range(size):
                    part = op.strided_slice(data, axes=[1], begin=[k * skip], end=[k * skip + starts])
                    hit = op.equal(op.expand_dims(part, -1), _tensor(pool[:, k]))
                    match = hit if match is None else op.logical_and(match, hit)
                found = op.sum(op.astype(match, "float32"), axis=1)
                count = found if count is None else op.add(count, found)
            if count is not None:
                counts.append(bb.normalize(count))
                columns += [grams[g] for g in of_size]

        if counts:
            # Output columns: a 0/1 matrix, as several n-grams may share one column.
            to_column = np.zeros((len(columns), out_size), "float32")
            to_column[np.arange(len(columns)), columns] = 1
            counted = counts[0] if len(counts) == 1 else op.concat(counts, axis=1)
            freq = bb.normalize(op.matmul(counted, _tensor(to_column)))
        else:
            freq = op.zeros([rows, out_size], "float32")

        weights = attr.get("weights")
        if mode == "IDF":
            seen = op.greater(freq, relax.const(0.0, "float32"))
            scale = (_tensor(np.asarray(weights, "float32")) if weights
                     else relax.const(1.0, "float32"))
            out = op.where(seen, scale, relax.const(0.0, "float32"))
        elif mode == "TFIDF" and weights:
            out = op.multiply(freq, _tensor(np.asarray(weights, "float32")))
        else:
            out = freq
        return op.reshape(out, [out_size] if len(shape) == 1 else [rows, out_size])
