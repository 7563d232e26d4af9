// edgeuq: in-memory byte streams over a std::string (written for edgeuq's minimal runtime build).
#ifndef EDGEUQ_SUPPORT_BYTES_IO_H_
#define EDGEUQ_SUPPORT_BYTES_IO_H_
#include <tvm/ffi/string.h>
#include <tvm/support/io.h>

#include <algorithm>
#include <cstring>
#include <string>

namespace tvm {
namespace support {

/*! \brief Reads from a private copy of the given bytes. */
class BytesInStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;
  explicit BytesInStream(const std::string& data) : data_(data) {}
  explicit BytesInStream(const ffi::Bytes& data) : data_(data.data(), data.size()) {}
  size_t Read(void* ptr, size_t size) override {
    size_t n = std::min(size, data_.size() - pos_);
    if (n) std::memcpy(ptr, data_.data() + pos_, n);
    pos_ += n;
    return n;
  }
  size_t Write(const void*, size_t) override { return 0; }

 private:
  std::string data_;
  size_t pos_ = 0;
};

/*! \brief Appends to the given string. */
class BytesOutStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;
  explicit BytesOutStream(std::string* out) : out_(out) {}
  size_t Read(void*, size_t) override { return 0; }
  size_t Write(const void* ptr, size_t size) override {
    out_->append(static_cast<const char*>(ptr), size);
    return size;
  }

 private:
  std::string* out_;
};

}  // namespace support
}  // namespace tvm
#endif  // EDGEUQ_SUPPORT_BYTES_IO_H_
