// edgecc shim: how values are encoded on a support::Stream.
//
// edgecc's own implementation of the encoding the TVM compiler uses when it
// writes VM executables, constants and tensors (all little-endian):
//   - numbers and enums: their bytes, as stored in memory;
//   - DLDataType: code (u8), bits (u8), lanes (u16); DLDevice: type (i32), id (i32);
//   - strings: length as u64, then the bytes;
//   - sequences (std::vector, ffi::Array): count as u64, then each element;
//   - pairs: first then second; maps: count as u64, then (key, value) pairs.
// Executables compiled by the installed TVM are read back with this code in
// edgecc's e2e tests (tests/e2e/test_runtime.py, riscv64).
#ifndef EDGECC_SHIM_TVM_SUPPORT_SERIALIZER_H_
#define EDGECC_SHIM_TVM_SUPPORT_SERIALIZER_H_

#include <dlpack/dlpack.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/endian.h>
#include <tvm/ffi/string.h>
#include <tvm/support/io.h>

#include <cstdint>
#include <map>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tvm {
namespace support {

// Numbers and enums: raw bytes, swapped on big-endian hosts.
template <typename T>
struct Serializer<T, std::enable_if_t<std::is_arithmetic_v<T> || std::is_enum_v<T>>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const T& value) {
    T tmp = value;
    if constexpr (!TVM_FFI_IO_NO_ENDIAN_SWAP) ffi::ByteSwap(&tmp, sizeof(T), 1);
    strm->Write(static_cast<const void*>(&tmp), sizeof(T));
  }
  static bool Read(Stream* strm, T* out) {
    if (strm->Read(static_cast<void*>(out), sizeof(T)) != sizeof(T)) return false;
    if constexpr (!TVM_FFI_IO_NO_ENDIAN_SWAP) ffi::ByteSwap(out, sizeof(T), 1);
    return true;
  }
};

template <>
struct Serializer<DLDataType> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const DLDataType& t) {
    strm->Write(t.code);
    strm->Write(t.bits);
    strm->Write(t.lanes);
  }
  static bool Read(Stream* strm, DLDataType* t) {
    return strm->Read(&t->code) && strm->Read(&t->bits) && strm->Read(&t->lanes);
  }
};

template <>
struct Serializer<DLDevice> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const DLDevice& d) {
    strm->Write(static_cast<int32_t>(d.device_type));
    strm->Write(d.device_id);
  }
  static bool Read(Stream* strm, DLDevice* d) {
    int32_t type = 0;
    if (!strm->Read(&type) || !strm->Read(&d->device_id)) return false;
    d->device_type = static_cast<DLDeviceType>(type);
    return true;
  }
};

namespace detail {
inline void WriteBytes(Stream* strm, const char* data, size_t n) {
  strm->Write(static_cast<uint64_t>(n));
  if (n != 0) strm->Write(static_cast<const void*>(data), n);
}
inline bool ReadBytes(Stream* strm, std::string* out) {
  uint64_t n = 0;
  if (!strm->Read(&n)) return false;
  out->resize(static_cast<size_t>(n));
  return n == 0 || strm->Read(static_cast<void*>(&(*out)[0]), n) == n;
}
}  // namespace detail

template <>
struct Serializer<std::string> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::string& s) {
    detail::WriteBytes(strm, s.data(), s.size());
  }
  static bool Read(Stream* strm, std::string* s) { return detail::ReadBytes(strm, s); }
};

template <>
struct Serializer<ffi::String> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const ffi::String& s) {
    detail::WriteBytes(strm, s.data(), s.size());
  }
  static bool Read(Stream* strm, ffi::String* s) {
    std::string tmp;
    if (!detail::ReadBytes(strm, &tmp)) return false;
    *s = ffi::String(std::move(tmp));
    return true;
  }
};

template <typename T>
struct Serializer<std::vector<T>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::vector<T>& v) {
    strm->Write(static_cast<uint64_t>(v.size()));
    strm->WriteArray(v.data(), v.size());
  }
  static bool Read(Stream* strm, std::vector<T>* v) {
    uint64_t n = 0;
    if (!strm->Read(&n)) return false;
    v->resize(static_cast<size_t>(n));
    return strm->ReadArray(v->data(), v->size());
  }
};

template <typename T>
struct Serializer<ffi::Array<T>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const ffi::Array<T>& arr) {
    strm->Write(static_cast<uint64_t>(arr.size()));
    for (const T& item : arr) Serializer<T>::Write(strm, item);
  }
  static bool Read(Stream* strm, ffi::Array<T>* arr) {
    uint64_t n = 0;
    if (!strm->Read(&n)) return false;
    ffi::Array<T> result;
    for (uint64_t i = 0; i < n; ++i) {
      T item;
      if (!Serializer<T>::Read(strm, &item)) return false;
      result.push_back(std::move(item));
    }
    *arr = std::move(result);
    return true;
  }
};

template <typename A, typename B>
struct Serializer<std::pair<A, B>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::pair<A, B>& p) {
    strm->Write(p.first);
    strm->Write(p.second);
  }
  static bool Read(Stream* strm, std::pair<A, B>* p) {
    return strm->Read(&p->first) && strm->Read(&p->second);
  }
};

namespace detail {
template <typename MapT>
struct MapSerializer {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const MapT& m) {
    strm->Write(static_cast<uint64_t>(m.size()));
    for (const auto& kv : m) {
      strm->Write(kv.first);
      strm->Write(kv.second);
    }
  }
  static bool Read(Stream* strm, MapT* m) {
    uint64_t n = 0;
    if (!strm->Read(&n)) return false;
    m->clear();
    for (uint64_t i = 0; i < n; ++i) {
      typename MapT::key_type key;
      typename MapT::mapped_type value;
      if (!strm->Read(&key) || !strm->Read(&value)) return false;
      m->emplace(std::move(key), std::move(value));
    }
    return true;
  }
};
}  // namespace detail

template <typename K, typename V>
struct Serializer<std::map<K, V>> : detail::MapSerializer<std::map<K, V>> {};

template <typename K, typename V>
struct Serializer<std::unordered_map<K, V>> : detail::MapSerializer<std::unordered_map<K, V>> {};

}  // namespace support
}  // namespace tvm

#endif  // EDGECC_SHIM_TVM_SUPPORT_SERIALIZER_H_
