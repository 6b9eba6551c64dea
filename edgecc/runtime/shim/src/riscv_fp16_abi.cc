// edgecc: half-precision conversion helpers with the RISC-V hard-float calling
// convention, compiled into the riscv64 libtvm_runtime.so only.
//
// Why: for an fp16 <-> fp32 conversion on a core without Zfh, LLVM calls
// __extendhfsf2 / __truncsfhf2 / __truncdfhf2 and, under the lp64d ABI, passes
// and returns the half value in an FP register (fa0).  TVM 0.27 emits weak
// fallbacks of these helpers into each model.so that take / return the half in
// an integer register (a0), so the compiled model reads garbage.  A model.so is
// dlopen()ed after the runner and its libraries, and the dynamic linker binds
// its calls to the first definition in the global scope: these ones.
//
// A half in an FP register is seen here as a float whose low 16 bits hold the
// value (callers put the bits there with fmv.w.x and read them back with
// fmv.x.w), so the conversions work on those bits.
#if defined(__riscv) && defined(__riscv_float_abi_double)

#include <builtin_fp16.h>

#include <cstdint>
#include <cstring>

namespace {

inline uint16_t HalfBits(float reg) {
  uint32_t bits;
  std::memcpy(&bits, &reg, sizeof(bits));
  return static_cast<uint16_t>(bits & 0xFFFFu);
}

inline float HalfRegister(uint16_t half) {
  uint32_t bits = 0xFFFF0000u | half;  // NaN-boxed, as the psABI asks
  float reg;
  std::memcpy(&reg, &bits, sizeof(reg));
  return reg;
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) float __extendhfsf2(float half_reg) {
  return __extendXfYf2__<uint16_t, uint16_t, 10, float, uint32_t, 23>(HalfBits(half_reg));
}

__attribute__((visibility("default"))) double __extendhfdf2(float half_reg) {
  return __extendXfYf2__<uint16_t, uint16_t, 10, double, uint64_t, 52>(HalfBits(half_reg));
}

__attribute__((visibility("default"))) float __truncsfhf2(float value) {
  return HalfRegister(__truncXfYf2__<float, uint32_t, 23, uint16_t, uint16_t, 10>(value));
}

__attribute__((visibility("default"))) float __truncdfhf2(double value) {
  return HalfRegister(__truncXfYf2__<double, uint64_t, 52, uint16_t, uint16_t, 10>(value));
}

}  // extern "C"

#endif  // __riscv && __riscv_float_abi_double
