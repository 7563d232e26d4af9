// edgeuq: minimal byte stream + serializer for building the TVM C++ runtime from the sources
// shipped in the apache-tvm wheel (which omits this header). Written for edgeuq, not taken from
// TVM. Wire format (little-endian hosts only, which covers x86-64, aarch64 and armv7):
//   trivially copyable T      -> its raw bytes
//   std::string / vector<POD> -> uint64 element count, then the raw elements
//   vector<other>             -> uint64 count, then each element serialized in turn
//   ffi::String / ffi::Array<T> -> as std::string / std::vector<T>
//   pair<A,B>                 -> A then B;  (unordered_)map -> uint64 count, then key/value pairs
#ifndef EDGEUQ_TVM_SUPPORT_IO_H_
#define EDGEUQ_TVM_SUPPORT_IO_H_

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/string.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tvm {
namespace support {

class Stream;

template <typename T>
struct Serializer;

/*! \brief A byte stream: subclasses provide raw Read/Write; typed helpers go through Serializer. */
class Stream {
 public:
  virtual ~Stream() = default;
  /*! \return the number of bytes read. */
  virtual size_t Read(void* ptr, size_t size) = 0;
  /*! \return the number of bytes written. */
  virtual size_t Write(const void* ptr, size_t size) = 0;

  template <typename T>
  void Write(const T& value) {
    Serializer<T>::Write(this, value);
  }
  template <typename T>
  bool Read(T* out) {
    return Serializer<T>::Read(this, out);
  }
  template <typename T>
  void WriteArray(const T* data, size_t n) {
    for (size_t i = 0; i < n; ++i) this->Write<T>(data[i]);
  }
  template <typename T>
  bool ReadArray(T* data, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      if (!this->Read<T>(data + i)) return false;
    }
    return true;
  }
};

template <typename T>
struct Serializer {
  static constexpr bool enabled = std::is_trivially_copyable<T>::value;
  static void Write(Stream* s, const T& v) {
    static_assert(std::is_trivially_copyable<T>::value, "no Serializer for this type");
    s->Write(static_cast<const void*>(&v), sizeof(T));
  }
  static bool Read(Stream* s, T* v) {
    static_assert(std::is_trivially_copyable<T>::value, "no Serializer for this type");
    return s->Read(static_cast<void*>(v), sizeof(T)) == sizeof(T);
  }
};

namespace detail {
inline void WriteCount(Stream* s, size_t n) {
  uint64_t c = static_cast<uint64_t>(n);
  s->Write(static_cast<const void*>(&c), sizeof(c));
}
inline bool ReadCount(Stream* s, uint64_t* n) {
  return s->Read(static_cast<void*>(n), sizeof(*n)) == sizeof(*n);
}
}  // namespace detail

template <>
struct Serializer<std::string> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const std::string& v) {
    detail::WriteCount(s, v.size());
    if (!v.empty()) s->Write(static_cast<const void*>(v.data()), v.size());
  }
  static bool Read(Stream* s, std::string* v) {
    uint64_t n;
    if (!detail::ReadCount(s, &n)) return false;
    v->resize(static_cast<size_t>(n));
    if (n == 0) return true;
    return s->Read(static_cast<void*>(&(*v)[0]), v->size()) == v->size();
  }
};

template <typename T>
struct Serializer<std::vector<T>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const std::vector<T>& v) {
    detail::WriteCount(s, v.size());
    if (std::is_trivially_copyable<T>::value) {
      if (!v.empty()) s->Write(static_cast<const void*>(v.data()), v.size() * sizeof(T));
    } else {
      for (const T& x : v) Serializer<T>::Write(s, x);
    }
  }
  static bool Read(Stream* s, std::vector<T>* v) {
    uint64_t n;
    if (!detail::ReadCount(s, &n)) return false;
    v->resize(static_cast<size_t>(n));
    if (n == 0) return true;
    if (std::is_trivially_copyable<T>::value) {
      size_t bytes = v->size() * sizeof(T);
      return s->Read(static_cast<void*>(v->data()), bytes) == bytes;
    }
    for (T& x : *v) {
      if (!Serializer<T>::Read(s, &x)) return false;
    }
    return true;
  }
};

template <>
struct Serializer<ffi::String> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const ffi::String& v) { Serializer<std::string>::Write(s, std::string(v)); }
  static bool Read(Stream* s, ffi::String* v) {
    std::string tmp;
    if (!Serializer<std::string>::Read(s, &tmp)) return false;
    *v = ffi::String(tmp);
    return true;
  }
};

template <typename T>
struct Serializer<ffi::Array<T>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const ffi::Array<T>& v) {
    detail::WriteCount(s, v.size());
    for (const T& x : v) Serializer<T>::Write(s, x);
  }
  static bool Read(Stream* s, ffi::Array<T>* v) {
    uint64_t n;
    if (!detail::ReadCount(s, &n)) return false;
    ffi::Array<T> out;
    for (uint64_t i = 0; i < n; ++i) {
      T x;
      if (!Serializer<T>::Read(s, &x)) return false;
      out.push_back(x);
    }
    *v = out;
    return true;
  }
};

template <typename A, typename B>
struct Serializer<std::pair<A, B>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const std::pair<A, B>& v) {
    Serializer<A>::Write(s, v.first);
    Serializer<B>::Write(s, v.second);
  }
  static bool Read(Stream* s, std::pair<A, B>* v) {
    return Serializer<A>::Read(s, &v->first) && Serializer<B>::Read(s, &v->second);
  }
};

namespace detail {
template <typename M>
struct MapSerializer {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const M& m) {
    WriteCount(s, m.size());
    for (const auto& kv : m) {
      Serializer<typename M::key_type>::Write(s, kv.first);
      Serializer<typename M::mapped_type>::Write(s, kv.second);
    }
  }
  static bool Read(Stream* s, M* m) {
    uint64_t n;
    if (!ReadCount(s, &n)) return false;
    m->clear();
    for (uint64_t i = 0; i < n; ++i) {
      typename M::key_type k;
      typename M::mapped_type v;
      if (!Serializer<typename M::key_type>::Read(s, &k)) return false;
      if (!Serializer<typename M::mapped_type>::Read(s, &v)) return false;
      m->emplace(std::move(k), std::move(v));
    }
    return true;
  }
};
}  // namespace detail

template <typename K, typename V, typename... R>
struct Serializer<std::map<K, V, R...>> : detail::MapSerializer<std::map<K, V, R...>> {};
template <typename K, typename V, typename... R>
struct Serializer<std::unordered_map<K, V, R...>> : detail::MapSerializer<std::unordered_map<K, V, R...>> {};

}  // namespace support
}  // namespace tvm

#endif  // EDGEUQ_TVM_SUPPORT_IO_H_
