// edgecc shim: IEEE-754 binary floating point narrowing / widening.
//
// The runtime's builtin_fp16.cc exports __gnu_f2h_ieee, __gnu_h2f_ieee and
// __truncdfhf2 (called by generated fp16 code) through these two templates:
//
//   __truncXfYf2__<SrcT, SrcRep, SrcSigBits, DstT, DstRep, DstSigBits>(a)
//       narrow `a` (round to nearest, ties to even; overflow -> inf; NaN stays NaN)
//   __extendXfYf2__<SrcT, SrcRep, SrcSigBits, DstT, DstRep, DstSigBits>(a)
//       widen `a` exactly (subnormals are normalised)
//
// `*Rep` is the unsigned integer type holding the bits, `*SigBits` the number
// of stored significand bits (23 for float, 52 for double, 10 for half).
// edgecc's own implementation.
#ifndef EDGECC_SHIM_BUILTIN_FP16_H_
#define EDGECC_SHIM_BUILTIN_FP16_H_

#include <cstdint>
#include <cstring>

namespace edgecc_fp {

template <typename To, typename From>
inline To BitCast(const From& v) {
  static_assert(sizeof(To) == sizeof(From), "size mismatch");
  To out;
  std::memcpy(&out, &v, sizeof(To));
  return out;
}

// Shift `m` right by `s` bits, rounding to nearest with ties to even.
inline uint64_t ShiftRoundEven(uint64_t m, int s) {
  if (s <= 0) return m << (-s);
  if (s >= 64) return 0;
  uint64_t q = m >> s;
  uint64_t rem = m & ((uint64_t(1) << s) - 1);
  uint64_t half = uint64_t(1) << (s - 1);
  if (rem > half || (rem == half && (q & 1))) ++q;
  return q;
}

template <typename Rep, int SigBits>
struct Layout {
  static constexpr int kBits = static_cast<int>(sizeof(Rep) * 8);
  static constexpr int kExpBits = kBits - SigBits - 1;
  static constexpr int kExpMax = (1 << kExpBits) - 1;
  static constexpr int kBias = kExpMax >> 1;
  static constexpr uint64_t kSigMask = (uint64_t(1) << SigBits) - 1;
};

}  // namespace edgecc_fp

template <typename SRC_T, typename SRC_REP_T, int SRC_SIG_BITS, typename DST_T,
          typename DST_REP_T, int DST_SIG_BITS>
inline DST_T __truncXfYf2__(SRC_T a) {
  using S = edgecc_fp::Layout<SRC_REP_T, SRC_SIG_BITS>;
  using D = edgecc_fp::Layout<DST_REP_T, DST_SIG_BITS>;
  const uint64_t bits = edgecc_fp::BitCast<SRC_REP_T>(a);
  const uint64_t sign = (bits >> (S::kBits - 1)) & 1;
  const int exp = static_cast<int>((bits >> SRC_SIG_BITS) & S::kExpMax);
  const uint64_t sig = bits & S::kSigMask;
  const uint64_t dst_sign = sign << (D::kBits - 1);
  uint64_t out;

  if (exp == S::kExpMax) {  // inf or NaN
    out = uint64_t(D::kExpMax) << DST_SIG_BITS;
    if (sig != 0) {  // quiet NaN, keep the top payload bits
      out |= (uint64_t(1) << (DST_SIG_BITS - 1)) | (sig >> (SRC_SIG_BITS - DST_SIG_BITS));
    }
  } else if (exp == 0 && sig == 0) {
    out = 0;
  } else {
    // value = mant * 2^(e - SRC_SIG_BITS)
    const uint64_t mant = exp == 0 ? sig : (sig | (uint64_t(1) << SRC_SIG_BITS));
    const int e = (exp == 0 ? 1 : exp) - S::kBias;
    int dexp = e + D::kBias;  // biased destination exponent if normal
    if (dexp >= 1) {
      uint64_t m = edgecc_fp::ShiftRoundEven(mant, SRC_SIG_BITS - DST_SIG_BITS);
      if (m >> (DST_SIG_BITS + 1)) {  // rounding carried into a new bit
        m >>= 1;
        ++dexp;
      }
      if (dexp >= D::kExpMax) {
        out = uint64_t(D::kExpMax) << DST_SIG_BITS;  // overflow -> inf
      } else {
        out = (uint64_t(dexp) << DST_SIG_BITS) | (m & D::kSigMask);
      }
    } else {
      // Subnormal result: the unit is 2^(1 - bias - DST_SIG_BITS).  A carry
      // out of the significand lands on exponent field 1, which is correct.
      const int shift = SRC_SIG_BITS - DST_SIG_BITS + (1 - dexp);
      out = edgecc_fp::ShiftRoundEven(mant, shift);
    }
  }
  return edgecc_fp::BitCast<DST_T>(static_cast<DST_REP_T>(out | dst_sign));
}

template <typename SRC_T, typename SRC_REP_T, int SRC_SIG_BITS, typename DST_T,
          typename DST_REP_T, int DST_SIG_BITS>
inline DST_T __extendXfYf2__(SRC_T a) {
  using S = edgecc_fp::Layout<SRC_REP_T, SRC_SIG_BITS>;
  using D = edgecc_fp::Layout<DST_REP_T, DST_SIG_BITS>;
  const uint64_t bits = edgecc_fp::BitCast<SRC_REP_T>(a);
  const uint64_t sign = (bits >> (S::kBits - 1)) & 1;
  const int exp = static_cast<int>((bits >> SRC_SIG_BITS) & S::kExpMax);
  uint64_t sig = bits & S::kSigMask;
  constexpr int kWiden = DST_SIG_BITS - SRC_SIG_BITS;
  uint64_t out;

  if (exp == S::kExpMax) {  // inf or NaN
    out = (uint64_t(D::kExpMax) << DST_SIG_BITS) | (sig << kWiden);
  } else if (exp == 0 && sig == 0) {
    out = 0;
  } else if (exp == 0) {  // subnormal source: normalise
    int e = 1 - S::kBias;
    while (!(sig & (uint64_t(1) << SRC_SIG_BITS))) {
      sig <<= 1;
      --e;
    }
    out = (uint64_t(e + D::kBias) << DST_SIG_BITS) | ((sig & S::kSigMask) << kWiden);
  } else {
    out = (uint64_t(exp - S::kBias + D::kBias) << DST_SIG_BITS) | (sig << kWiden);
  }
  out |= sign << (D::kBits - 1);
  return edgecc_fp::BitCast<DST_T>(static_cast<DST_REP_T>(out));
}

#endif  // EDGECC_SHIM_BUILTIN_FP16_H_
