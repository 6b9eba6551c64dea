// edgecc shim: base64 text streams (used when tensors go to / come from JSON).
//
// Both wrap another support::Stream.  The out-stream buffers the raw bytes and
// writes their standard base64 text on Finish(); the in-stream decodes the
// whole underlying text on InitPosition() and then serves the bytes.  The
// codec itself is tvm-ffi's (tvm/ffi/extra/base64.h).
#ifndef EDGECC_SHIM_SUPPORT_BASE64_H_
#define EDGECC_SHIM_SUPPORT_BASE64_H_

#include <tvm/ffi/extra/base64.h>
#include <tvm/support/io.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <string>

namespace tvm {
namespace support {

class Base64OutStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit Base64OutStream(Stream* sink) : sink_(sink) {}

  size_t Read(void*, size_t) override {
    TVM_FFI_THROW(InternalError) << "Base64OutStream is write-only";
    return 0;
  }
  size_t Write(const void* ptr, size_t size) override {
    raw_.append(static_cast<const char*>(ptr), size);
    return size;
  }
  /*! \brief Encode everything written so far to the sink. */
  void Finish() {
    ffi::String text = ffi::Base64Encode(ffi::Bytes(raw_));
    sink_->Write(static_cast<const void*>(text.data()), text.size());
    raw_.clear();
  }

 private:
  Stream* sink_;
  std::string raw_;
};

class Base64InStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit Base64InStream(Stream* source) : source_(source) {}

  /*! \brief Read and decode the whole source (whitespace is ignored). */
  void InitPosition() {
    std::string text;
    char buf[4096];
    size_t n;
    while ((n = source_->Read(buf, sizeof(buf))) != 0) {
      for (size_t i = 0; i < n; ++i) {
        if (!std::isspace(static_cast<unsigned char>(buf[i]))) text.push_back(buf[i]);
      }
    }
    ffi::Bytes raw = ffi::Base64Decode(ffi::String(text));
    decoded_.assign(raw.data(), raw.size());
    pos_ = 0;
  }
  size_t Read(void* ptr, size_t size) override {
    size_t n = std::min(size, decoded_.size() - pos_);
    if (n != 0) std::memcpy(ptr, decoded_.data() + pos_, n);
    pos_ += n;
    return n;
  }
  size_t Write(const void*, size_t) override {
    TVM_FFI_THROW(InternalError) << "Base64InStream is read-only";
    return 0;
  }

 private:
  Stream* source_;
  std::string decoded_;
  size_t pos_ = 0;
};

}  // namespace support
}  // namespace tvm

#endif  // EDGECC_SHIM_SUPPORT_BASE64_H_
