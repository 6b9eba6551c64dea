// edgecc shim: the byte-stream interface the TVM runtime sources use.
//
// The apache-tvm wheel ships the runtime's .cc files but not this internal
// header.  This is edgecc's own small implementation, written from what the
// call sites need: a virtual Read/Write of raw bytes plus typed helpers that
// delegate to support::Serializer<T> (see serializer.h) for the encoding.
#ifndef EDGECC_SHIM_TVM_SUPPORT_IO_H_
#define EDGECC_SHIM_TVM_SUPPORT_IO_H_

#include <tvm/ffi/endian.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace tvm {
namespace support {

class Stream;

// Encoding of one value of type T on a Stream; specialised in serializer.h
// (and by runtime headers such as vm/executable.h).
template <typename T, typename Enable = void>
struct Serializer;

/*! \brief A sequential byte stream (binary, little-endian on the wire). */
class Stream {
 public:
  virtual ~Stream() = default;
  /*! \brief Read up to `size` bytes; returns the number of bytes read. */
  virtual size_t Read(void* ptr, size_t size) = 0;
  /*! \brief Write `size` bytes; returns the number of bytes written. */
  virtual size_t Write(const void* ptr, size_t size) = 0;

  /*! \brief Write one value with its Serializer. */
  template <typename T>
  void Write(const T& value);
  /*! \brief Read one value with its Serializer; false on a short or bad read. */
  template <typename T>
  bool Read(T* out);
  /*! \brief Write `n` consecutive values (no length prefix). */
  template <typename T>
  void WriteArray(const T* data, size_t n);
  /*! \brief Read `n` consecutive values (no length prefix). */
  template <typename T>
  bool ReadArray(T* data, size_t n);
};

}  // namespace support
}  // namespace tvm

#include <tvm/support/serializer.h>

namespace tvm {
namespace support {

template <typename T>
inline void Stream::Write(const T& value) {
  Serializer<T>::Write(this, value);
}

template <typename T>
inline bool Stream::Read(T* out) {
  return Serializer<T>::Read(this, out);
}

template <typename T>
inline void Stream::WriteArray(const T* data, size_t n) {
  if constexpr (std::is_arithmetic_v<T> && TVM_FFI_IO_NO_ENDIAN_SWAP) {
    if (n != 0) Write(static_cast<const void*>(data), n * sizeof(T));
    return;
  }
  for (size_t i = 0; i < n; ++i) Serializer<T>::Write(this, data[i]);
}

template <typename T>
inline bool Stream::ReadArray(T* data, size_t n) {
  if constexpr (std::is_arithmetic_v<T> && TVM_FFI_IO_NO_ENDIAN_SWAP) {
    return n == 0 || Read(static_cast<void*>(data), n * sizeof(T)) == n * sizeof(T);
  }
  for (size_t i = 0; i < n; ++i) {
    if (!Serializer<T>::Read(this, data + i)) return false;
  }
  return true;
}

}  // namespace support
}  // namespace tvm

#endif  // EDGECC_SHIM_TVM_SUPPORT_IO_H_
