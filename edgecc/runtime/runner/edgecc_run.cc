// edgecc-run: load a compiled edgecc/TVM model, run `main` on .npy inputs,
// write the outputs as .npy and print one JSON line of timings.
//
//   edgecc-run MODEL.so [--device cpu|cuda] [--input FILE.npy]... [--output-dir DIR]
//              [--repeat N] [--warmup N] [--threads N]
//
// Timing: --warmup untimed runs first (when timing several runs, for at least 200 ms),
// then --repeat timed ones; the JSON line gives their median, mean and min.
//
// Exit codes: 0 ok; 2 bad input or failure to load/run (one line on stderr,
// "edgecc-run: error: ..."); 3 CUDA requested but no CUDA runtime/GPU present.
//
// Built by edgecc (edgecc/runtime) for each target arch, next to
// libtvm_runtime.so and libtvm_ffi.so, with rpath $ORIGIN.
#include <dlfcn.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>
#include <tvm/runtime/device_api.h>
#include <tvm/runtime/tensor.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

constexpr int kExitBadInput = 2;
constexpr int kExitNoDevice = 3;

// An error with the exit code it maps to.
struct RunError : std::runtime_error {
  int code;
  RunError(const std::string& msg, int exit_code = kExitBadInput)
      : std::runtime_error(msg), code(exit_code) {}
};

[[noreturn]] void Fail(const std::string& msg, int code = kExitBadInput) {
  throw RunError(msg, code);
}

// Collapse a multi-line message into one line.
std::string OneLine(const std::string& text) {
  std::string out;
  bool pending_sep = false;
  for (char c : text) {
    if (c == '\n' || c == '\r') {
      pending_sep = !out.empty();
      continue;
    }
    if (pending_sep) {
      out += " | ";
      pending_sep = false;
    }
    out += c;
  }
  return out;
}

// ---------------------------------------------------------------- options

struct Options {
  std::string model;
  std::string device = "cpu";
  std::vector<std::string> inputs;
  std::string output_dir = ".";
  int repeat = 1;
  int warmup = 1;
  int threads = 0;  // 0: leave the TVM default
};

int ParseCount(const std::string& flag, const std::string& value, int minimum) {
  char* end = nullptr;
  long v = std::strtol(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0' || v < minimum || v > 1000000000L) {
    Fail(flag + " expects an integer >= " + std::to_string(minimum) + ", got '" + value + "'");
  }
  return static_cast<int>(v);
}

const char* kUsage =
    "usage: edgecc-run MODEL.so [--device cpu|cuda] [--input FILE.npy]... "
    "[--output-dir DIR] [--repeat N] [--warmup N] [--threads N]";

Options ParseArgs(int argc, char** argv) {
  Options opt;
  std::vector<std::string> args(argv + 1, argv + argc);
  for (size_t i = 0; i < args.size(); ++i) {
    std::string a = args[i];
    std::string value;
    bool has_inline = false;
    if (a.rfind("--", 0) == 0) {
      size_t eq = a.find('=');
      if (eq != std::string::npos) {
        value = a.substr(eq + 1);
        a = a.substr(0, eq);
        has_inline = true;
      }
    }
    auto next = [&]() -> std::string {
      if (has_inline) return value;
      if (i + 1 >= args.size()) Fail(a + " expects a value");
      return args[++i];
    };
    if (a == "-h" || a == "--help") {
      std::printf("%s\n", kUsage);
      std::exit(0);
    } else if (a == "--device") {
      opt.device = next();
      if (opt.device != "cpu" && opt.device != "cuda") {
        Fail("--device must be cpu or cuda, got '" + opt.device + "'");
      }
    } else if (a == "--input") {
      opt.inputs.push_back(next());
    } else if (a == "--output-dir") {
      opt.output_dir = next();
    } else if (a == "--repeat") {
      opt.repeat = ParseCount(a, next(), 1);
    } else if (a == "--warmup") {
      opt.warmup = ParseCount(a, next(), 0);
    } else if (a == "--threads") {
      opt.threads = ParseCount(a, next(), 1);
    } else if (a.rfind("-", 0) == 0 && a.size() > 1) {
      Fail("unknown option '" + a + "' (" + kUsage + ")");
    } else if (opt.model.empty()) {
      opt.model = a;
    } else {
      Fail("unexpected argument '" + a + "' (" + kUsage + ")");
    }
  }
  if (opt.model.empty()) Fail(std::string("missing MODEL.so (") + kUsage + ")");
  return opt;
}

// ---------------------------------------------------------------- .npy

struct NpyType {
  const char* descr;  // numpy descr without the byte-order mark
  const char* tvm;    // TVM dtype string
};

// Element types edgecc-run reads and writes.
const NpyType kNpyTypes[] = {
    {"f4", "float32"}, {"f2", "float16"}, {"f8", "float64"}, {"i1", "int8"},
    {"u1", "uint8"},   {"i2", "int16"},   {"u2", "uint16"},  {"i4", "int32"},
    {"u4", "uint32"},  {"i8", "int64"},   {"u8", "uint64"},  {"b1", "bool"},
};

struct HostArray {
  std::vector<int64_t> shape;
  DLDataType dtype;
  std::string dtype_name;
  std::string data;
};

// Find `'key':` in a numpy header dict and return the text of its value.
std::string HeaderValue(const std::string& header, const std::string& key,
                        const std::string& path) {
  size_t k = header.find("'" + key + "'");
  if (k == std::string::npos) Fail(path + ": not a valid .npy file (no '" + key + "' in header)");
  size_t colon = header.find(':', k);
  if (colon == std::string::npos) Fail(path + ": not a valid .npy file (bad header)");
  size_t start = header.find_first_not_of(" ", colon + 1);
  if (start == std::string::npos) Fail(path + ": not a valid .npy file (bad header)");
  size_t end;
  if (header[start] == '(') {
    end = header.find(')', start);
    if (end == std::string::npos) Fail(path + ": not a valid .npy file (bad shape)");
    ++end;
  } else if (header[start] == '\'' || header[start] == '"') {
    end = header.find(header[start], start + 1);
    if (end == std::string::npos) Fail(path + ": not a valid .npy file (bad header)");
    ++end;
  } else {
    end = header.find_first_of(",}", start);
    if (end == std::string::npos) end = header.size();
  }
  return header.substr(start, end - start);
}

HostArray ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail("cannot open input '" + path + "'");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  static const char kMagic[] = "\x93NUMPY";
  if (bytes.size() < 10 || bytes.compare(0, 6, kMagic, 6) != 0) {
    Fail(path + ": not a .npy file (bad magic)");
  }
  int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len, header_start;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) |
                 (static_cast<size_t>(static_cast<unsigned char>(bytes[9])) << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) Fail(path + ": truncated .npy header");
    header_len = 0;
    for (int i = 0; i < 4; ++i) {
      header_len |= static_cast<size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
    }
    header_start = 12;
  } else {
    Fail(path + ": unsupported .npy version " + std::to_string(major));
  }
  if (header_start + header_len > bytes.size()) Fail(path + ": truncated .npy header");
  std::string header = bytes.substr(header_start, header_len);

  std::string descr = HeaderValue(header, "descr", path);
  if (descr.size() < 3) Fail(path + ": bad dtype " + descr);
  descr = descr.substr(1, descr.size() - 2);  // strip quotes
  if (descr.empty()) Fail(path + ": bad dtype");
  char order = descr[0];
  std::string code = (order == '<' || order == '>' || order == '|' || order == '=')
                         ? descr.substr(1)
                         : descr;
  bool one_byte = code.size() == 2 && code[1] == '1';
  if (order == '>' && !one_byte) {
    Fail(path + ": big-endian arrays are not supported (dtype '" + descr + "')");
  }
  HostArray arr;
  for (const NpyType& t : kNpyTypes) {
    if (code == t.descr) arr.dtype_name = t.tvm;
  }
  if (arr.dtype_name.empty()) Fail(path + ": unsupported dtype '" + descr + "'");
  arr.dtype = ffi::StringToDLDataType(arr.dtype_name);

  std::string fortran = HeaderValue(header, "fortran_order", path);
  if (fortran.rfind("True", 0) == 0) {
    Fail(path + ": Fortran-order arrays are not supported (save with np.ascontiguousarray)");
  }
  std::string shape_text = HeaderValue(header, "shape", path);
  if (shape_text.empty() || shape_text.front() != '(') Fail(path + ": bad shape " + shape_text);
  std::string inner = shape_text.substr(1, shape_text.size() - 2);
  std::stringstream ss(inner);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t b = item.find_first_not_of(" L");
    if (b == std::string::npos) continue;
    size_t e = item.find_last_not_of(" L");
    std::string num = item.substr(b, e - b + 1);
    char* end = nullptr;
    long long v = std::strtoll(num.c_str(), &end, 10);
    if (*end != '\0' || v < 0) Fail(path + ": bad shape " + shape_text);
    arr.shape.push_back(v);
  }
  int64_t count = 1;
  for (int64_t d : arr.shape) count *= d;
  size_t elem_bytes = (arr.dtype.bits * arr.dtype.lanes + 7) / 8;
  size_t nbytes = static_cast<size_t>(count) * elem_bytes;
  size_t data_start = header_start + header_len;
  if (bytes.size() - data_start != nbytes) {
    Fail(path + ": data size " + std::to_string(bytes.size() - data_start) +
         " bytes does not match shape " + shape_text + " of " + arr.dtype_name + " (" +
         std::to_string(nbytes) + " bytes)");
  }
  arr.data = bytes.substr(data_start);
  return arr;
}

std::string NpyDescr(DLDataType dtype) {
  std::string name = std::string(ffi::DLDataTypeToString(dtype));
  for (const NpyType& t : kNpyTypes) {
    if (name == t.tvm) {
      return std::string(t.descr[1] == '1' ? "|" : "<") + t.descr;
    }
  }
  Fail("output dtype " + name + " cannot be written as .npy");
}

void WriteNpy(const std::string& path, const std::string& descr,
              const std::vector<int64_t>& shape, const void* data, size_t nbytes) {
  std::string shape_text = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) shape_text += ", ";
    shape_text += std::to_string(shape[i]);
  }
  if (shape.size() == 1) shape_text += ",";
  shape_text += ")";
  std::string header =
      "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape_text + ", }";
  // Pad so that magic(6) + version(2) + length(2) + header ends on 64 bytes, with '\n'.
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  if (!out) Fail("cannot write output '" + path + "'");
  out.write("\x93NUMPY\x01\x00", 8);
  uint16_t len = static_cast<uint16_t>(header.size());
  char len_bytes[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
  out.write(len_bytes, 2);
  out.write(header.data(), header.size());
  out.write(static_cast<const char*>(data), nbytes);
  if (!out) Fail("cannot write output '" + path + "'");
}

// ---------------------------------------------------------------- outputs

struct HostOutput {
  std::string descr;
  std::vector<int64_t> shape;
  std::string data;
};

template <typename T>
HostOutput Scalar(const char* descr, T value) {
  HostOutput out{descr, {}, std::string(sizeof(T), '\0')};
  std::memcpy(&out.data[0], &value, sizeof(T));
  return out;
}

// Flatten the value `main` returned (nested tuples allowed) into host arrays.
void CollectOutputs(const ffi::Any& value, std::vector<HostOutput>* outs) {
  if (auto tensor = value.as<ffi::Tensor>()) {
    const DLTensor* t = tensor.value().GetDLTensorPtr();
    HostOutput out;
    out.descr = NpyDescr(t->dtype);
    out.shape.assign(t->shape, t->shape + t->ndim);
    int64_t count = 1;
    for (int i = 0; i < t->ndim; ++i) count *= t->shape[i];
    size_t nbytes = static_cast<size_t>(count) * ((t->dtype.bits * t->dtype.lanes + 7) / 8);
    out.data.resize(nbytes);
    if (nbytes != 0) {
      tvm::runtime::Tensor::CopyToBytes(t, &out.data[0], nbytes);
    }
    outs->push_back(std::move(out));
  } else if (const auto* arr = value.as<ffi::ArrayObj>()) {
    for (size_t i = 0; i < arr->size(); ++i) CollectOutputs(arr->at(i), outs);
  } else if (auto shape = value.as<ffi::Shape>()) {
    HostOutput out;
    out.descr = "<i8";
    out.shape = {static_cast<int64_t>(shape.value().size())};
    out.data.assign(reinterpret_cast<const char*>(shape.value().data()),
                    shape.value().size() * sizeof(int64_t));
    outs->push_back(std::move(out));
  } else if (auto b = value.as<bool>()) {
    outs->push_back(Scalar<uint8_t>("|b1", b.value() ? 1 : 0));
  } else if (auto i = value.as<int64_t>()) {
    outs->push_back(Scalar<int64_t>("<i8", i.value()));
  } else if (auto f = value.as<double>()) {
    outs->push_back(Scalar<double>("<f8", f.value()));
  } else if (value == nullptr) {
    // a function returning nothing has no outputs
  } else {
    Fail("main returned a value of type " + std::string(value.GetTypeKey()) +
         " that cannot be written as .npy");
  }
}

// ---------------------------------------------------------------- devices

std::string ExecutableDir() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return ".";
  std::string path(buf, static_cast<size_t>(n));
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

// Load an optional library next to the runner; returns the dlerror text on failure.
std::string LoadSideLibrary(const std::string& name) {
  std::string path = ExecutableDir() + "/" + name;
  if (access(path.c_str(), F_OK) != 0) return path + " not found";
  if (dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    const char* err = dlerror();
    return err ? err : "dlopen failed";
  }
  return "";
}

DLDevice SetUpDevice(const std::string& name) {
  if (name == "cpu") return DLDevice{kDLCPU, 0};
  DLDevice dev{kDLCUDA, 0};
  if (!ffi::Function::GetGlobal("device_api.cuda")) {
    std::string why = LoadSideLibrary("libtvm_runtime_cuda.so");
    if (!ffi::Function::GetGlobal("device_api.cuda")) {
      Fail("no CUDA runtime/GPU present (" + (why.empty() ? "no CUDA device API" : why) + ")",
           kExitNoDevice);
    }
  }
  ffi::Any exist;
  try {
    tvm::runtime::DeviceAPI* api = tvm::runtime::DeviceAPI::Get(dev, /*allow_missing=*/true);
    if (api != nullptr) api->GetAttr(dev, tvm::runtime::kExist, &exist);
  } catch (const ffi::Error&) {
    exist = 0;
  }
  auto ok = exist.try_cast<int64_t>();
  if (!ok || ok.value() == 0) Fail("no CUDA runtime/GPU present (no CUDA device 0)", kExitNoDevice);
  return dev;
}

void Sync(DLDevice dev) {
  if (dev.device_type != kDLCPU) {
    tvm::runtime::DeviceAPI::Get(dev)->StreamSync(dev, nullptr);
  }
}

// ---------------------------------------------------------------- main flow

std::string FormatMs(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.6f", v);
  return buf;
}

int Run(const Options& opt) {
  if (opt.threads > 0) setenv("TVM_NUM_THREADS", std::to_string(opt.threads).c_str(), 1);
  // TVM pins its pool threads to cores by default. Where other work shares the cores, a pinned
  // thread cannot move off a busy one and a parallel kernel waits for it: on a shared 2-core
  // machine a sparse FFN ran 1.2 ms unpinned and 1.2 or 2.2 ms (run to run) pinned. Leave
  // placement to the OS, as ONNX Runtime does, unless the user sets TVM_BIND_THREADS.
  setenv("TVM_BIND_THREADS", "0", /*overwrite=*/0);

  // Optional contrib kernels (sort, random, ...) shipped beside the runner.
  LoadSideLibrary("libtvm_runtime_extra.so");

  std::vector<HostArray> host_inputs;
  for (const std::string& path : opt.inputs) host_inputs.push_back(ReadNpy(path));

  DLDevice dev = SetUpDevice(opt.device);

  if (access(opt.model.c_str(), R_OK) != 0) Fail("cannot read model '" + opt.model + "'");
  // dlopen() searches the library path for names without a slash: use the full path.
  char resolved[PATH_MAX];
  std::string model_path = realpath(opt.model.c_str(), resolved) ? resolved : opt.model;
  ffi::Module exec = ffi::Module::LoadFromFile(model_path);
  auto load = exec->GetFunction("vm_load_executable", /*query_imports=*/true);
  if (!load) Fail("'" + opt.model + "' is not a Relax VM executable (no vm_load_executable)");
  ffi::Module vm = load.value()().cast<ffi::Module>();

  // One device for the model and, when it is not the CPU, the CPU as host.
  const int kPooled = 2;
  auto init = vm->GetFunction("vm_initialization", false);
  if (!init) Fail("the VM has no vm_initialization");
  if (dev.device_type == kDLCPU) {
    init.value()(static_cast<int>(kDLCPU), 0, kPooled);
  } else {
    init.value()(static_cast<int>(dev.device_type), dev.device_id, kPooled,
                 static_cast<int>(kDLCPU), 0, kPooled);
  }

  auto main_fn = vm->GetFunction("main", false);
  if (!main_fn) Fail("the model has no function 'main'");
  if (auto arity_fn = vm->GetFunction("get_function_arity", false)) {
    int arity = arity_fn.value()(ffi::String("main")).cast<int>();
    if (arity != static_cast<int>(host_inputs.size())) {
      std::string names;
      if (auto name_fn = vm->GetFunction("get_function_param_name", false)) {
        for (int i = 0; i < arity; ++i) {
          names += (i ? ", " : "") +
                   name_fn.value()(ffi::String("main"), i).cast<ffi::String>().operator std::string();
        }
      }
      Fail("main expects " + std::to_string(arity) + " input(s)" +
           (names.empty() ? "" : " (" + names + ")") + " but " +
           std::to_string(host_inputs.size()) + " --input given");
    }
  }

  std::vector<ffi::Any> args;
  for (const HostArray& h : host_inputs) {
    tvm::runtime::Tensor t = tvm::runtime::Tensor::Empty(ffi::Shape(h.shape), h.dtype, dev);
    if (!h.data.empty()) t.CopyFromBytes(h.data.data(), h.data.size());
    args.emplace_back(t);
  }
  std::vector<ffi::AnyView> views(args.begin(), args.end());

  ffi::Any result;
  auto call = [&]() {
    main_fn.value().CallPacked(views.data(), static_cast<int32_t>(views.size()), &result);
    Sync(dev);
  };
  // Warm-up: --warmup runs, and when timing (--repeat > 1) at least kWarmupMs of them. A fresh
  // process's pool threads can share one core for the first few milliseconds, until the
  // scheduler spreads them: timing then would catch a parallel kernel at half speed.
  constexpr double kWarmupMs = 200.0;
  const auto warm_start = std::chrono::steady_clock::now();
  auto warm_ms = [&]() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - warm_start).count();
  };
  for (int i = 0; i < opt.warmup || (opt.warmup > 0 && opt.repeat > 1 && warm_ms() < kWarmupMs); ++i) call();
  std::vector<double> ms;
  for (int i = 0; i < opt.repeat; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    call();
    auto t1 = std::chrono::steady_clock::now();
    ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }

  std::vector<HostOutput> outs;
  CollectOutputs(result, &outs);
  if (mkdir(opt.output_dir.c_str(), 0755) != 0 && errno != EEXIST) {
    Fail("cannot create output directory '" + opt.output_dir + "': " + std::strerror(errno));
  }
  for (size_t i = 0; i < outs.size(); ++i) {
    std::string path = opt.output_dir + "/output_" + std::to_string(i) + ".npy";
    WriteNpy(path, outs[i].descr, outs[i].shape, outs[i].data.data(), outs[i].data.size());
  }

  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  size_t n = sorted.size();
  double median = n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
  double mean = std::accumulate(ms.begin(), ms.end(), 0.0) / static_cast<double>(n);
  std::printf("{\"runs\": %zu, \"median_ms\": %s, \"mean_ms\": %s, \"min_ms\": %s, \"outputs\": %zu}\n",
              n, FormatMs(median).c_str(), FormatMs(mean).c_str(), FormatMs(sorted[0]).c_str(),
              outs.size());
  std::fflush(stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(ParseArgs(argc, argv));
  } catch (const RunError& e) {
    std::fprintf(stderr, "edgecc-run: error: %s\n", OneLine(e.what()).c_str());
    return e.code;
  } catch (const ffi::Error& e) {
    std::fprintf(stderr, "edgecc-run: error: %s: %s\n", e.kind().c_str(),
                 OneLine(e.message()).c_str());
    return kExitBadInput;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "edgecc-run: error: %s\n", OneLine(e.what()).c_str());
    return kExitBadInput;
  }
}
