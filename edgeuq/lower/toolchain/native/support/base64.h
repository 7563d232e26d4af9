// edgeuq: the minimal runtime does not (de)serialize tensors to JSON; these streams only keep
// tensor.cc compiling and fail loudly if used.
#ifndef EDGEUQ_SUPPORT_BASE64_H_
#define EDGEUQ_SUPPORT_BASE64_H_
#include <tvm/ffi/error.h>
#include <tvm/support/io.h>
namespace tvm {
namespace support {
class Base64InStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;
  explicit Base64InStream(Stream*) {}
  void InitPosition() {}
  size_t Read(void*, size_t) override { TVM_FFI_THROW(RuntimeError) << "base64 streams are not built in this runtime"; }
  size_t Write(const void*, size_t) override { return 0; }
};
class Base64OutStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;
  explicit Base64OutStream(Stream*) {}
  void Finish() {}
  size_t Read(void*, size_t) override { return 0; }
  size_t Write(const void*, size_t) override { TVM_FFI_THROW(RuntimeError) << "base64 streams are not built in this runtime"; }
};
}  // namespace support
}  // namespace tvm
#endif  // EDGEUQ_SUPPORT_BASE64_H_
