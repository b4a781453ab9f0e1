// The context, device memory and cuBLAS products of the CUDA backend.
#include <algorithm>
#include <climits>
#include <mutex>

#include "device.h"
#include "kernels.h"

namespace eigenlorax::cuda {
namespace {

// The oldest compute capability the plugin has code for (CMAKE_CUDA_ARCHITECTURES).
constexpr int kMinComputeCapability = 80;
// Scratch kept between operations: up to an eighth of the device's memory (at least
// 256 MiB); an operation that needed more gives it back when it ends.
constexpr size_t kMinKeepArenaBytes = size_t{256} << 20;
constexpr size_t kAlign = 256;

struct State {
  std::once_flag once;
  Context context;
  std::string failure;  // why the context could not be created
  std::mutex operation;  // held by each Workspace; guards the arena
  void* arena = nullptr;
  size_t arenaBytes = 0;
  size_t keepArenaBytes = kMinKeepArenaBytes;
};

State& state() {
  static State s;
  return s;
}

std::string errorText(cudaError_t status) {
  return std::string(cudaGetErrorName(status)) + ": " + cudaGetErrorString(status);
}

// Why no device can be used, or "" when device 0 can.
std::string deviceProblem(Availability& a) {
  cudaRuntimeGetVersion(&a.runtimeVersion);
  cudaDriverGetVersion(&a.driverVersion);
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status == cudaErrorInsufficientDriver) {
    return a.driverVersion == 0 ? "no NVIDIA driver found (libcuda.so.1 is missing)"
                                : "the NVIDIA driver supports CUDA " + std::to_string(a.driverVersion / 1000) + "." +
                                      std::to_string(a.driverVersion % 1000 / 10) +
                                      ", older than the CUDA runtime this plugin was built with (" +
                                      std::to_string(a.runtimeVersion / 1000) + "." +
                                      std::to_string(a.runtimeVersion % 1000 / 10) + ")";
  }
  if (status == cudaErrorNoDevice || (status == cudaSuccess && count == 0)) return "no CUDA device found";
  if (status != cudaSuccess) return "cudaGetDeviceCount failed (" + errorText(status) + ")";
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    DeviceInfo d;
    d.index = i;
    d.name = p.name;
    d.major = p.major;
    d.minor = p.minor;
    d.totalBytes = p.totalGlobalMem;
    d.multiprocessors = p.multiProcessorCount;
    a.devices.push_back(d);
  }
  if (a.devices.empty()) return "no CUDA device could be queried";
  const DeviceInfo& d0 = a.devices.front();
  if (d0.major * 10 + d0.minor < kMinComputeCapability) {
    return "device 0 (" + d0.name + ") has compute capability " + std::to_string(d0.major) + "." +
           std::to_string(d0.minor) + "; this build has code for 8.0 and newer";
  }
  return "";
}

void createContext(State& s) {
  Availability a;
  std::string problem = deviceProblem(a);
  if (!problem.empty()) {
    s.failure = problem;
    return;
  }
  const CublasApi* blas = loadCublas(problem);
  if (blas == nullptr) {
    s.failure = problem;
    return;
  }
  Context& c = s.context;
  c.device = 0;
  cudaError_t status = cudaSetDevice(0);
  if (status == cudaSuccess) status = cudaStreamCreateWithFlags(&c.stream, cudaStreamNonBlocking);
  if (status != cudaSuccess) {
    s.failure = "CUDA device 0 could not be initialised (" + errorText(status) + ")";
    return;
  }
  int blasStatus = blas->create(&c.blasHandle);
  if (blasStatus == 0) blasStatus = blas->setStream(c.blasHandle, c.stream);
  // Full f32 products (no TF32), so results match the CPU backend's.
  if (blasStatus == 0) blasStatus = blas->setMathMode(c.blasHandle, kCublasDefaultMath);
  if (blasStatus != 0) {
    s.failure = "cuBLAS could not be initialised (" + cublasStatusName(blasStatus) + ", " + blas->library + ")";
    return;
  }
  c.blas = blas;
  size_t freeBytes = 0, totalBytes = 0;
  if (cudaMemGetInfo(&freeBytes, &totalBytes) == cudaSuccess) s.keepArenaBytes = std::max(kMinKeepArenaBytes, totalBytes / 8);
}

void requireInt(int64_t value, const char* what) {
  if (value > INT_MAX) {
    throw CoreError(eigenlorax::code::kInvalidArgument,
                    std::string(what) + " = " + std::to_string(value) + " exceeds cuBLAS' 32-bit sizes");
  }
}

}  // namespace

Context& context() {
  State& s = state();
  std::call_once(s.once, [&s] { createContext(s); });
  if (s.context.blas == nullptr) throw CoreError(code::kUnavailable, "CUDA is not available: " + s.failure);
  // The calling thread may be new to CUDA: make device 0 current on it.
  check(cudaSetDevice(s.context.device), "cudaSetDevice");
  return s.context;
}

Availability probe() {
  Availability a;
  try {
    a.reason = deviceProblem(a);
    if (a.reason.empty()) {
      const Context& c = context();
      c.blas->getVersion(c.blasHandle, &a.cublasVersion);
      a.cublasLibrary = c.blas->library;
      size_t freeBytes = 0, totalBytes = 0;
      if (cudaMemGetInfo(&freeBytes, &totalBytes) == cudaSuccess) a.devices.front().freeBytes = freeBytes;
      a.available = true;
    }
  } catch (const std::exception& e) {
    // The context's own reason, without "CUDA is not available: " in front.
    a.reason = state().failure.empty() ? e.what() : state().failure;
  }
  return a;
}

void check(cudaError_t status, const std::string& what) {
  if (status == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so the next call starts clean
  if (status == cudaErrorMemoryAllocation) {
    throw CoreError(eigenlorax::code::kOutOfMemory, what + ": out of GPU memory (" + errorText(status) + ")");
  }
  throw CoreError(code::kDevice, what + " failed (" + errorText(status) + ")");
}

void checkBlas(int status, const std::string& what) {
  if (status == 0) return;
  if (status == 3) throw CoreError(eigenlorax::code::kOutOfMemory, what + ": " + cublasStatusName(status));
  throw CoreError(code::kDevice, what + " failed (" + cublasStatusName(status) + ")");
}

void synchronize(const std::string& what) {
  check(cudaGetLastError(), what + " (kernel launch)");
  check(cudaStreamSynchronize(context().stream), what);
}

// Every operation starts with a Workspace: it is where an unusable GPU is reported.
Workspace::Workspace() : lock_(state().operation) { context(); }

Workspace::~Workspace() {
  State& s = state();
  if (s.context.stream != nullptr) cudaStreamSynchronize(s.context.stream);
  for (void* chunk : extra_) cudaFree(chunk);
  const size_t wanted = s.arenaBytes + extraBytes_;
  if (wanted > s.keepArenaBytes) {
    // A one-off large operation: give its memory back.
    if (s.arena != nullptr) cudaFree(s.arena);
    s.arena = nullptr;
    s.arenaBytes = 0;
  } else if (extraBytes_ > 0) {
    // Grow the arena to what this operation needed, so the next one fits in it.
    if (s.arena != nullptr) cudaFree(s.arena);
    s.arena = nullptr;
    s.arenaBytes = 0;
    if (cudaMalloc(&s.arena, wanted) == cudaSuccess) s.arenaBytes = wanted;
    else cudaGetLastError();
  }
}

void* Workspace::takeBytes(size_t bytes) {
  bytes = (std::max<size_t>(bytes, 1) + kAlign - 1) / kAlign * kAlign;
  State& s = state();
  if (used_ + bytes <= s.arenaBytes) {
    void* p = static_cast<char*>(s.arena) + used_;
    used_ += bytes;
    return p;
  }
  void* chunk = nullptr;
  check(cudaMalloc(&chunk, bytes), "cudaMalloc of " + std::to_string(bytes) + " bytes of scratch");
  extra_.push_back(chunk);
  extraBytes_ += bytes;
  return chunk;
}

uint64_t workspaceBytes() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.operation);
  return s.arenaBytes;
}

DeviceMatrix allocate(int64_t rows, int64_t cols, DType dtype) {
  if (rows <= 0 || cols <= 0) {
    throw CoreError(eigenlorax::code::kInvalidArgument,
                    "device matrix: expected positive rows and cols, received " + shapeString(rows, cols));
  }
  context();
  DeviceMatrix m;
  m.rows = rows;
  m.cols = cols;
  m.dtype = dtype;
  check(cudaMalloc(&m.data, m.bytes()), "cudaMalloc of " + std::to_string(m.bytes()) + " bytes (" +
                                            shapeString(rows, cols) + " " + dtypeName(dtype) + ")");
  return m;
}

void upload(const DeviceMatrix& m, const void* hostBytes) {
  const Context& c = context();
  check(cudaMemcpyAsync(m.data, hostBytes, m.bytes(), cudaMemcpyHostToDevice, c.stream), "copy to the device");
  synchronize("copy to the device");
}

void download(const DeviceMatrix& m, float* host) {
  Workspace ws;
  const float* f = deviceF32(Operand::of(m), ws, "matrix");
  copyToHost(f, m.rows * m.cols, host);
}

void release(DeviceMatrix& m) noexcept {
  if (m.data != nullptr) cudaFree(m.data);
  m.data = nullptr;
}

const float* deviceF32(const Operand& op, Workspace& ws, const char* name) {
  const Context& c = context();
  const int64_t count = op.rows() * op.cols();
  if (op.device != nullptr) {
    if (op.device->data == nullptr) {
      throw CoreError(eigenlorax::code::kInvalidArgument, std::string(name) + ": the device matrix was released");
    }
    if (op.device->dtype == DType::F32) return static_cast<const float*>(op.device->data);
    float* wide = ws.take<float>(count);
    kernels::widen(op.device->data, static_cast<int>(op.device->dtype), count, wide, c.stream);
    return wide;
  }
  if (op.host.data == nullptr) throw CoreError(eigenlorax::code::kInvalidArgument, std::string(name) + ": missing");
  return uploadArray(op.host.data, count, ws);
}

const float* deviceF32Optional(const Operand& op, Workspace& ws, const char* name) {
  return op.empty() ? nullptr : deviceF32(op, ws, name);
}

void copyToHost(const float* device, int64_t count, float* host) {
  const Context& c = context();
  check(cudaMemcpyAsync(host, device, static_cast<size_t>(count) * sizeof(float), cudaMemcpyDeviceToHost, c.stream),
        "copy to the host");
  synchronize("copy to the host");
}

void gemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  requireInt(std::max({M, N, K}), "a product dimension");
  requireInt(std::max({lda, ldb, ldc}), "a leading dimension");
  const Context& c = context();
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
  checkBlas(c.blas->sgemm(c.blasHandle, transB ? kCublasOpT : kCublasOpN, transA ? kCublasOpT : kCublasOpN,
                          static_cast<int>(N), static_cast<int>(M), static_cast<int>(K), &alpha, B,
                          static_cast<int>(ldb), A, static_cast<int>(lda), &beta, C, static_cast<int>(ldc)),
            "cublasSgemm (" + shapeString(M, K) + " x " + shapeString(K, N) + ")");
}

void gemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
          const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  requireInt(std::max({M, N, K}), "a product dimension");
  requireInt(std::max({lda, ldb, ldc}), "a leading dimension");
  const Context& c = context();
  checkBlas(c.blas->dgemm(c.blasHandle, transB ? kCublasOpT : kCublasOpN, transA ? kCublasOpT : kCublasOpN,
                          static_cast<int>(N), static_cast<int>(M), static_cast<int>(K), &alpha, B,
                          static_cast<int>(ldb), A, static_cast<int>(lda), &beta, C, static_cast<int>(ldc)),
            "cublasDgemm (" + shapeString(M, K) + " x " + shapeString(K, N) + ")");
}

}  // namespace eigenlorax::cuda
