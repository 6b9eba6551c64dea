// edgecc shim: the small string helpers the runtime sources use.
#ifndef EDGECC_SHIM_SUPPORT_UTILS_H_
#define EDGECC_SHIM_SUPPORT_UTILS_H_

#include <cctype>
#include <string>

namespace tvm {
namespace support {

/*! \brief True when `s` is a non-empty run of decimal digits. */
inline bool IsNumber(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!std::isdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

}  // namespace support
}  // namespace tvm

#endif  // EDGECC_SHIM_SUPPORT_UTILS_H_
