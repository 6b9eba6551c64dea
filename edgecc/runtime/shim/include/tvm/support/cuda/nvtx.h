// edgecc shim: NVTX profiling ranges.  The CPU-only runtime that edgecc builds
// from source has no NVTX, so a range is a no-op object.
#ifndef EDGECC_SHIM_TVM_SUPPORT_CUDA_NVTX_H_
#define EDGECC_SHIM_TVM_SUPPORT_CUDA_NVTX_H_

#include <string>

namespace tvm {
namespace support {

class NVTXScopedRange {
 public:
  explicit NVTXScopedRange(const char*) {}
  explicit NVTXScopedRange(const std::string&) {}
  NVTXScopedRange(const NVTXScopedRange&) = delete;
  NVTXScopedRange& operator=(const NVTXScopedRange&) = delete;
};

}  // namespace support
}  // namespace tvm

#endif  // EDGECC_SHIM_TVM_SUPPORT_CUDA_NVTX_H_
