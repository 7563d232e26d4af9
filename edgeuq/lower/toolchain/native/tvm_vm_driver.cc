// edgeuq: a small command-line driver for a TVM Relax library, for boards (or emulators) where
// no TVM Python wheel exists. It is linked with the TVM C++ runtime sources from the wheels.
//
//   tvm_vm_driver LIB.so INPUTS.bin OUTPUTS.bin [ENTRY]
//
// Tensor file format (little-endian), used for both INPUTS and OUTPUTS:
//   char magic[8] = "EUQTENS1"; uint32 count; then per tensor:
//   uint8 dtype_code (DLPack: 0 int, 1 uint, 2 float); uint8 bits; uint16 ndim;
//   int64 shape[ndim]; raw row-major data.
// ENTRY defaults to "main". The VM runs on CPU with the pooled allocator.
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/runtime/tensor.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using tvm::runtime::Tensor;
namespace ffi = tvm::ffi;

const char kMagic[8] = {'E', 'U', 'Q', 'T', 'E', 'N', 'S', '1'};

template <typename T>
void Get(std::ifstream& in, T* v, size_t n = 1) {
  in.read(reinterpret_cast<char*>(v), sizeof(T) * n);
  if (!in) throw std::runtime_error("truncated tensor file");
}

template <typename T>
void Put(std::ofstream& out, const T* v, size_t n = 1) {
  out.write(reinterpret_cast<const char*>(v), sizeof(T) * n);
}

std::vector<Tensor> ReadTensors(const std::string& path, DLDevice dev) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  char magic[8];
  Get(in, magic, 8);
  if (std::memcmp(magic, kMagic, 8) != 0) throw std::runtime_error("bad magic in " + path);
  uint32_t count;
  Get(in, &count);
  std::vector<Tensor> tensors;
  for (uint32_t i = 0; i < count; ++i) {
    uint8_t code, bits;
    uint16_t ndim;
    Get(in, &code);
    Get(in, &bits);
    Get(in, &ndim);
    std::vector<int64_t> shape(ndim);
    if (ndim) Get(in, shape.data(), ndim);
    DLDataType dtype{code, bits, 1};
    Tensor t = Tensor::Empty(ffi::Shape(shape), dtype, dev);
    size_t nbytes = (bits + 7) / 8;
    for (int64_t d : shape) nbytes *= static_cast<size_t>(d);
    std::vector<char> buf(nbytes);
    if (nbytes) Get(in, buf.data(), nbytes);
    t.CopyFromBytes(buf.data(), nbytes);
    tensors.push_back(t);
  }
  return tensors;
}

void WriteTensors(const std::string& path, const std::vector<Tensor>& tensors) {
  std::ofstream out(path, std::ios::binary);
  if (!out) throw std::runtime_error("cannot write " + path);
  Put(out, kMagic, 8);
  uint32_t count = static_cast<uint32_t>(tensors.size());
  Put(out, &count);
  for (const Tensor& t : tensors) {
    uint8_t code = t->dtype.code, bits = t->dtype.bits;
    uint16_t ndim = static_cast<uint16_t>(t->ndim);
    Put(out, &code);
    Put(out, &bits);
    Put(out, &ndim);
    size_t nbytes = (bits + 7) / 8;
    for (int i = 0; i < t->ndim; ++i) {
      int64_t d = t->shape[i];
      Put(out, &d);
      nbytes *= static_cast<size_t>(d);
    }
    std::vector<char> buf(nbytes);
    if (nbytes) t.CopyToBytes(buf.data(), nbytes);
    out.write(buf.data(), static_cast<std::streamsize>(nbytes));
  }
  if (!out) throw std::runtime_error("failed writing " + path);
}

void Flatten(const ffi::Any& value, std::vector<Tensor>* out) {
  if (auto t = value.as<Tensor>()) {
    out->push_back(*t);
  } else if (auto arr = value.as<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& v : *arr) Flatten(v, out);
  } else {
    throw std::runtime_error("entry returned a value that is neither a tensor nor a tuple of tensors");
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4 || argc > 5) {
    std::cerr << "usage: " << argv[0] << " LIB.so INPUTS.bin OUTPUTS.bin [ENTRY]\n";
    return 2;
  }
  std::string entry = argc == 5 ? argv[4] : "main";
  try {
    DLDevice cpu{kDLCPU, 0};
    ffi::Module lib = ffi::Module::LoadFromFile(argv[1]);
    ffi::Optional<ffi::Function> load = lib->GetFunction("vm_load_executable", true);
    if (!load.has_value()) throw std::runtime_error("library has no vm_load_executable (not a Relax VM library?)");
    ffi::Module vm = (*load)().cast<ffi::Module>();
    ffi::Function init = vm->GetFunction("vm_initialization", false).value();
    init(static_cast<int>(kDLCPU), 0, 2 /* pooled allocator */);
    ffi::Optional<ffi::Function> fn = vm->GetFunction(entry, false);
    if (!fn.has_value()) throw std::runtime_error("no function '" + entry + "' in the VM");
    std::vector<Tensor> inputs = ReadTensors(argv[2], cpu);
    std::vector<ffi::AnyView> args(inputs.begin(), inputs.end());
    ffi::Any result;
    fn.value().CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
    std::vector<Tensor> outputs;
    Flatten(result, &outputs);
    WriteTensors(argv[3], outputs);
    std::cout << "ran " << entry << ": " << inputs.size() << " inputs -> " << outputs.size() << " outputs\n";
  } catch (const std::exception& e) {
    std::cerr << "tvm_vm_driver: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
