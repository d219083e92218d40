// Shared pieces of every CUDA kernel: the error check, warp and block reductions, and the
// half-precision helpers. Device code only sees plain pointers; spans stop at the host
// launchers (kernels_cuda.h).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>

namespace kiln::cuda {

// Throws std::runtime_error naming the failed call, the CUDA error and the call site.
[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* expr, const char* file,
                                          int line) {
  throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorString(err) + " (" +
                           cudaGetErrorName(err) + ") in " + expr + " at " + file + ":" +
                           std::to_string(line));
}

#define KILN_CUDA_CHECK(expr)                                                    \
  do {                                                                           \
    const cudaError_t kiln_cuda_err_ = (expr);                                   \
    if (kiln_cuda_err_ != cudaSuccess) {                                         \
      ::kiln::cuda::throw_cuda_error(kiln_cuda_err_, #expr, __FILE__, __LINE__); \
    }                                                                            \
  } while (0)

inline constexpr int kWarpSize = 32;

// ---- Programmatic dependent launch (compute capability 9.0 and later).
// launch_kernel lets a kernel's blocks start while the kernel before it on the stream is still
// running: its launch, its blocks' start and (in the matrix-vector kernels) its first weight
// loads overlap the previous kernel instead of following it. Every kernel keeps one rule for
// that: it calls begin_kernel() first, or reads only weights (which no kernel writes) before
// wait_for_previous_kernels(); nothing another kernel writes or reads is touched before the
// wait returns. The wait returns when the previous kernel has finished and its writes are
// visible, and that kernel waited for its own predecessor, so the order of the stream holds.
// In a plain launch (older devices, launches outside graphs by default, KILN_CUDA_PDL=0) both
// calls are no-ops and kernels run one after another.
__device__ __forceinline__ void allow_next_kernel_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void wait_for_previous_kernels() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
// The start of every kernel that reads nothing before waiting.
__device__ __forceinline__ void begin_kernel() {
  allow_next_kernel_launch();
  wait_for_previous_kernels();
}

// Where launch_kernel uses programmatic dependent launch, on devices of compute capability
// 9.0 or later: by default only in launches captured into a CUDA graph (the decode steps,
// where kernels of a few microseconds follow each other: decode 6-8% faster on an H100); a
// prompt's launches ran 6-9% slower with it (19.8k vs 21.7k tokens/s). KILN_CUDA_PDL=0 turns
// it off, =all uses it for every launch (to measure either).
enum class DependentLaunch { kOff, kGraphs, kAll };
inline DependentLaunch dependent_launch_mode() {
  static const DependentLaunch mode = [] {
    int device = 0, major = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        major < 9) {
      return DependentLaunch::kOff;
    }
    const char* env = std::getenv("KILN_CUDA_PDL");
    const std::string value = env != nullptr ? env : "";
    return value == "0" ? DependentLaunch::kOff
                        : (value == "all" ? DependentLaunch::kAll : DependentLaunch::kGraphs);
  }();
  return mode;
}

inline bool use_dependent_launch(cudaStream_t stream) {
  switch (dependent_launch_mode()) {
    case DependentLaunch::kOff:
      return false;
    case DependentLaunch::kAll:
      return true;
    case DependentLaunch::kGraphs: {
      cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
      return cudaStreamIsCapturing(stream, &status) == cudaSuccess &&
             status == cudaStreamCaptureStatusActive;
    }
  }
  return false;
}

// kernel<<<grid, block, shared, stream>>>(args...), as a programmatic dependent launch where
// use_dependent_launch(stream); throws on a bad configuration.
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared,
                   cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = use_dependent_launch(stream) ? 1 : 0;
  KILN_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

// Multiprocessors of the current device (read once).
inline int multiprocessor_count() {
  static const int count = [] {
    int device = 0, sms = 0;
    KILN_CUDA_CHECK(cudaGetDevice(&device));
    KILN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    return sms;
  }();
  return count;
}

inline unsigned ceil_div(size_t a, size_t b) { return static_cast<unsigned>((a + b - 1) / b); }

// Sum / max over the 32 lanes of a warp; every lane gets the result.
__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

// Sum / max over a whole block (blockDim.x a multiple of 32, at most 1024); every thread
// gets the result. `shared` holds 32 floats; the call begins and ends with a barrier so
// it can be used back to back with the same scratch.
__device__ __forceinline__ float block_sum(float v, float* shared) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int n_warps = blockDim.x / kWarpSize;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < n_warps ? shared[lane] : 0.0f;
  return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* shared) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int n_warps = blockDim.x / kWarpSize;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < n_warps ? shared[lane] : -INFINITY;
  return warp_max(v);
}

// Functions the dequantizers share between device code and host-side tests.
#define KILN_HOST_DEVICE __host__ __device__ __forceinline__
// `#pragma unroll` in host-device code: the host compiler would warn about it.
#ifdef __CUDA_ARCH__
#define KILN_UNROLL _Pragma("unroll")
#else
#define KILN_UNROLL
#endif

// IEEE half bits <-> float (the blocks store halves as raw uint16_t).
KILN_HOST_DEVICE float half_bits_to_float(uint16_t bits) {
  return __half2float(__ushort_as_half(bits));
}
KILN_HOST_DEVICE float float_from_bits(uint32_t bits) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}
__device__ __forceinline__ uint16_t float_to_half_bits(float f) {
  return __half_as_ushort(__float2half_rn(f));
}

// Four int8 values (as ints in -128..127) in one little-endian word, a first: a dp4a operand.
__device__ __forceinline__ uint32_t pack_int8x4(int a, int b, int c, int d) {
  return (static_cast<uint32_t>(a) & 0xFFu) | ((static_cast<uint32_t>(b) & 0xFFu) << 8) |
         ((static_cast<uint32_t>(c) & 0xFFu) << 16) | (static_cast<uint32_t>(d) << 24);
}

// A 16-bit load from a 2-byte aligned address (block fields).
KILN_HOST_DEVICE uint16_t load_u16(const uint8_t* p) {
  return *reinterpret_cast<const uint16_t*>(p);
}

}  // namespace kiln::cuda
