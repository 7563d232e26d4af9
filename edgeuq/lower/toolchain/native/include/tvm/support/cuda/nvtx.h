// edgeuq: CPU-only runtime build: NVTX ranges are no-ops.
#ifndef EDGEUQ_TVM_SUPPORT_CUDA_NVTX_H_
#define EDGEUQ_TVM_SUPPORT_CUDA_NVTX_H_
#include <string>
namespace tvm {
namespace support {
class NVTXScopedRange {
 public:
  explicit NVTXScopedRange(const char*) {}
  explicit NVTXScopedRange(const std::string&) {}
};
}  // namespace support
}  // namespace tvm
#endif  // EDGEUQ_TVM_SUPPORT_CUDA_NVTX_H_
