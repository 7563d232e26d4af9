// edgeuq: the one helper of TVM's support/utils.h that the runtime sources built here use.
#ifndef EDGEUQ_SUPPORT_UTILS_H_
#define EDGEUQ_SUPPORT_UTILS_H_
#include <cctype>
#include <string>
namespace tvm {
namespace support {
/*! \brief true iff s is a non-empty string of decimal digits. */
inline bool IsNumber(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!std::isdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}
}  // namespace support
}  // namespace tvm
#endif  // EDGEUQ_SUPPORT_UTILS_H_
