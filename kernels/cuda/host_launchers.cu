// Host launchers of kernels_cuda.h (copy in, launch, copy out) and the device buffer.
#include <algorithm>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/dequant.cuh"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/kernels_cuda.h"

namespace kiln::cuda {

DeviceBuffer::DeviceBuffer(size_t bytes, const char* what) : size_(bytes) {
  if (bytes == 0) return;
  const cudaError_t err = cudaMalloc(&data_, bytes);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky-free allocation error
    data_ = nullptr;
    size_t free_bytes = 0, total_bytes = 0;
    (void)cudaMemGetInfo(&free_bytes, &total_bytes);
    throw std::runtime_error(std::string("cannot allocate ") + std::to_string(bytes >> 20) +
                             " MiB of GPU memory for " + what + " (" + cudaGetErrorString(err) +
                             "): the device has " + std::to_string(free_bytes >> 20) +
                             " MiB free of " + std::to_string(total_bytes >> 20) + " MiB");
  }
}

DeviceBuffer::~DeviceBuffer() {
  if (data_ != nullptr) (void)cudaFree(data_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept : data_(other.data_), size_(other.size_) {
  other.data_ = nullptr;
  other.size_ = 0;
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) (void)cudaFree(data_);
    data_ = other.data_;
    size_ = other.size_;
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

void device_memory_info(size_t& free_bytes, size_t& total_bytes) {
  KILN_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
}

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

std::string cuda_device_description() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("no CUDA device (") + cudaGetErrorString(err) + ")";
  }
  if (count == 0) return "no CUDA device";
  cudaDeviceProp prop{};
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  return std::string(prop.name) + " (compute " + std::to_string(prop.major) + "." +
         std::to_string(prop.minor) + ", " + std::to_string(prop.totalGlobalMem >> 20) + " MiB)";
}

namespace {

// A device copy of a host span (inputs).
template <typename T>
DeviceBuffer upload(std::span<const T> host) {
  DeviceBuffer buf(host.size_bytes(), "a test input");
  if (!host.empty()) {
    KILN_CUDA_CHECK(cudaMemcpy(buf.data(), host.data(), host.size_bytes(), cudaMemcpyHostToDevice));
  }
  return buf;
}

// An output buffer with guard bytes on both sides: after the kernel, download() checks that
// the guards are untouched, so a kernel writing out of bounds fails the test that ran it.
class GuardedOutput {
 public:
  static constexpr size_t kGuardBytes = 256;  // keeps the payload 256-byte aligned
  static constexpr unsigned char kPattern = 0xA5;

  // `initial` (bytes, may be empty) is copied in: in-place kernels read it.
  GuardedOutput(size_t bytes, std::span<const std::byte> initial = {})
      : bytes_(bytes), buf_(bytes + 2 * kGuardBytes, "a test output") {
    KILN_CUDA_CHECK(cudaMemset(buf_.data(), kPattern, buf_.size()));
    if (!initial.empty()) {
      KILN_CUDA_CHECK(
          cudaMemcpy(payload(), initial.data(), initial.size(), cudaMemcpyHostToDevice));
    }
  }
  void* payload() const { return buf_.as<std::byte>() + kGuardBytes; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(payload());
  }

  template <typename T>
  void download(std::span<T> host) const {
    KILN_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<unsigned char> all(buf_.size());
    KILN_CUDA_CHECK(cudaMemcpy(all.data(), buf_.data(), all.size(), cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < kGuardBytes; ++i) {
      if (all[i] != kPattern || all[kGuardBytes + bytes_ + i] != kPattern) {
        throw std::runtime_error("CUDA kernel wrote outside its output buffer (guard byte " +
                                 std::to_string(i) + " changed)");
      }
    }
    const size_t n = std::min(host.size_bytes(), bytes_);
    std::memcpy(host.data(), all.data() + kGuardBytes, n);
  }

 private:
  size_t bytes_;
  DeviceBuffer buf_;
};

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

}  // namespace

void dequantize_row(GgmlType type, std::span<const std::byte> src, std::span<float> dst) {
  require(src.size() == row_bytes(type, dst.size()),
          "cuda::dequantize_row: " + std::to_string(src.size()) + " bytes of " +
              std::string(type_name(type)) + " for " + std::to_string(dst.size()) + " elements");
  const DeviceBuffer d_src = upload(src);
  const GuardedOutput d_dst(dst.size_bytes());
  launch_dequantize_rows(type, d_src.data(), dst.size(), nullptr, 1, d_dst.as<float>(), nullptr);
  d_dst.download(dst);
}

void dequantize_row_host(GgmlType type, std::span<const std::byte> src, std::span<float> dst) {
  require(src.size() == row_bytes(type, dst.size()) && dst.size() % 8 == 0,
          "cuda::dequantize_row_host: " + std::to_string(src.size()) + " bytes of " +
              std::string(type_name(type)) + " for " + std::to_string(dst.size()) + " elements");
  const auto* row = reinterpret_cast<const uint8_t*>(src.data());
  dispatch_weight_type(type, "dequantize_row_host", [&](auto t) {
    for (size_t i = 0; i < dst.size(); i += 8) {
      dequant8<decltype(t)::value>(row, static_cast<int>(i), dst.data() + i);
    }
  });
}

// The GEMM's workspace for one call: X, and W in chunks of 128 rows (the smallest the kernel
// takes), so the tests' matrices of more than 128 rows also check the chunking.
static DeviceBuffer test_gemm_workspace(const kernels::WeightMatrix& w, size_t m) {
  const size_t bytes = (m * w.cols * 2 + 255) / 256 * 256 + 128 * w.cols * 2;
  return DeviceBuffer(bytes, "the GEMM workspace");
}

void matmul(const kernels::WeightMatrix& w, std::span<const float> x, size_t m, std::span<float> y,
            MatmulPath path) {
  const size_t w_bytes = w.rows * row_bytes(w.type, w.cols);
  require(w.data.size() >= w_bytes && x.size() >= m * w.cols && y.size() >= m * w.rows,
          "cuda::matmul: spans too small for the shapes");
  const DeviceBuffer d_w = upload(w.data.first(w_bytes));
  const DeviceBuffer d_x = upload(x.first(m * w.cols));
  const GuardedOutput d_y(m * w.rows * sizeof(float));
  const DeviceBuffer ws = test_gemm_workspace(w, m);
  launch_matmul({w.type, d_w.data(), w.rows, w.cols}, d_x.as<float>(), m, d_y.as<float>(),
                {ws.data(), ws.size()}, nullptr, path);
  d_y.download(y.first(m * w.rows));
}

void matmul_silu_mul(const kernels::WeightMatrix& w, std::span<const float> x,
                     std::span<const float> gate, size_t m, std::span<float> y) {
  const size_t w_bytes = w.rows * row_bytes(w.type, w.cols);
  require(w.data.size() >= w_bytes && x.size() >= m * w.cols && gate.size() >= m * w.rows &&
              y.size() >= m * w.rows,
          "cuda::matmul_silu_mul: spans too small for the shapes");
  const DeviceBuffer d_w = upload(w.data.first(w_bytes));
  const DeviceBuffer d_x = upload(x.first(m * w.cols));
  const DeviceBuffer d_g = upload(gate.first(m * w.rows));
  const GuardedOutput d_y(m * w.rows * sizeof(float));
  const DeviceBuffer ws = test_gemm_workspace(w, m);
  launch_matmul_silu_mul({w.type, d_w.data(), w.rows, w.cols}, d_x.as<float>(), d_g.as<float>(), m,
                         d_y.as<float>(), {ws.data(), ws.size()}, nullptr);
  d_y.download(y.first(m * w.rows));
}

// Device buffers (guarded) for a norm's int8 copy of n values, and the copy back.
struct Int8Output {
  GuardedOutput q, d, sum;
  explicit Int8Output(size_t n) : q(n), d(n / 8 * sizeof(float)), sum(n / 8 * sizeof(float)) {}
  QuantizedX view() const { return {q.as<int8_t>(), d.as<float>(), sum.as<float>()}; }
  void download(size_t n, Int8Rows& out) const {
    out.q.resize(n);
    out.d.resize(n / 8);
    out.sum.resize(n / 8);
    q.download(std::span(out.q));
    d.download(std::span(out.d));
    sum.download(std::span(out.sum));
  }
};

// The input of the fused projections: x itself, or rmsnorm(x) * norm_weight with its int8
// copy (what the forward's norms hand the int8 kernel).
struct ProjectionInput {
  DeviceBuffer x, norm, normed;
  std::optional<Int8Output> q8_copy;
  ProjectionInput(std::span<const float> host_x, std::span<const float> norm_weight, size_t m,
                  size_t cols)
      : x(upload(host_x.first(m * cols))) {
    if (norm_weight.empty()) return;
    require(norm_weight.size() == cols, "the norm weight's length differs from the rows'");
    norm = upload(norm_weight);
    normed = DeviceBuffer(m * cols * sizeof(float), "the normed rows");
    q8_copy.emplace(m * cols);
    launch_rmsnorm(x.as<float>(), norm.as<float>(), 1e-5f, cols, m, nullptr, normed.as<float>(),
                   nullptr, q8_copy->view());
  }
  const float* rows() const {
    return normed.data() != nullptr ? normed.as<float>() : x.as<float>();
  }
  QuantizedX q8() const { return q8_copy ? q8_copy->view() : QuantizedX{}; }
};

void matmul_qkv(const kernels::WeightMatrix& wq, const kernels::WeightMatrix& wk,
                const kernels::WeightMatrix& wv, std::span<const float> x, size_t m,
                std::span<float> q, std::span<float> k, std::span<float> v,
                std::span<const float> norm_weight) {
  const kernels::WeightMatrix* ws[] = {&wq, &wk, &wv};
  const std::span<float> outs[] = {q, k, v};
  std::vector<DeviceBuffer> d_w;
  std::vector<GuardedOutput> d_y;
  for (int i = 0; i < 3; ++i) {
    const size_t w_bytes = ws[i]->rows * row_bytes(ws[i]->type, ws[i]->cols);
    require(ws[i]->data.size() >= w_bytes && ws[i]->cols == wq.cols &&
                outs[i].size() >= m * ws[i]->rows,
            "cuda::matmul_qkv: spans too small or widths differ");
    d_w.push_back(upload(ws[i]->data.first(w_bytes)));
    d_y.emplace_back(m * ws[i]->rows * sizeof(float));
  }
  require(x.size() >= m * wq.cols, "cuda::matmul_qkv: x too small");
  const ProjectionInput in(x, norm_weight, m, wq.cols);
  const DeviceBuffer gemm = test_gemm_workspace(wq, m);
  auto dm = [&](int i) {
    return DeviceMatrix{ws[i]->type, d_w[i].data(), ws[i]->rows, ws[i]->cols};
  };
  launch_matmul_qkv(dm(0), dm(1), dm(2), in.rows(), m, d_y[0].as<float>(), d_y[1].as<float>(),
                    d_y[2].as<float>(), {gemm.data(), gemm.size()}, nullptr, MatmulPath::kAuto,
                    in.q8());
  for (int i = 0; i < 3; ++i) d_y[i].download(outs[i].first(m * ws[i]->rows));
}

void matmul_swiglu(const kernels::WeightMatrix& w_gate, const kernels::WeightMatrix& w_up,
                   std::span<const float> x, size_t m, std::span<float> y,
                   std::span<const float> norm_weight) {
  const size_t g_bytes = w_gate.rows * row_bytes(w_gate.type, w_gate.cols);
  const size_t u_bytes = w_up.rows * row_bytes(w_up.type, w_up.cols);
  require(w_gate.data.size() >= g_bytes && w_up.data.size() >= u_bytes &&
              w_gate.rows == w_up.rows && w_gate.cols == w_up.cols && x.size() >= m * w_gate.cols &&
              y.size() >= m * w_up.rows,
          "cuda::matmul_swiglu: spans too small or shapes differ");
  const DeviceBuffer d_g = upload(w_gate.data.first(g_bytes)),
                     d_u = upload(w_up.data.first(u_bytes));
  const ProjectionInput in(x, norm_weight, m, w_gate.cols);
  const DeviceBuffer gate_out(m * w_gate.rows * sizeof(float), "the gate projection");
  const GuardedOutput d_y(m * w_up.rows * sizeof(float));
  const DeviceBuffer gemm = test_gemm_workspace(w_gate, m);
  launch_matmul_swiglu({w_gate.type, d_g.data(), w_gate.rows, w_gate.cols},
                       {w_up.type, d_u.data(), w_up.rows, w_up.cols}, in.rows(), m,
                       gate_out.as<float>(), d_y.as<float>(), {gemm.data(), gemm.size()}, nullptr,
                       MatmulPath::kAuto, in.q8());
  d_y.download(y.first(m * w_up.rows));
}

void rmsnorm(std::span<const float> x, std::span<const float> weight, float eps,
             std::span<float> out, Int8Rows* q8) {
  require(weight.size() == x.size() && out.size() == x.size(), "cuda::rmsnorm: sizes differ");
  const DeviceBuffer d_x = upload(x), d_w = upload(weight);
  const GuardedOutput d_out(out.size_bytes());
  const std::optional<Int8Output> d_q8 =
      q8 != nullptr ? std::optional<Int8Output>(x.size()) : std::nullopt;
  launch_rmsnorm(d_x.as<float>(), d_w.as<float>(), eps, x.size(), 1, nullptr, d_out.as<float>(),
                 nullptr, d_q8 ? d_q8->view() : QuantizedX{});
  d_out.download(out);
  if (d_q8) d_q8->download(x.size(), *q8);
}

void add_rmsnorm(std::span<float> x, std::span<const float> residual, std::span<const float> weight,
                 float eps, std::span<float> out, Int8Rows* q8) {
  require(residual.size() == x.size() && weight.size() == x.size() && out.size() == x.size(),
          "cuda::add_rmsnorm: sizes differ");
  const GuardedOutput d_x(x.size_bytes(), std::as_bytes(x));
  const DeviceBuffer d_r = upload(residual), d_w = upload(weight);
  const GuardedOutput d_out(out.size_bytes());
  const std::optional<Int8Output> d_q8 =
      q8 != nullptr ? std::optional<Int8Output>(x.size()) : std::nullopt;
  launch_add_rmsnorm(d_x.as<float>(), d_r.as<float>(), d_w.as<float>(), eps, x.size(), 1,
                     d_out.as<float>(), nullptr, d_q8 ? d_q8->view() : QuantizedX{});
  d_x.download(x);
  d_out.download(out);
  if (d_q8) d_q8->download(x.size(), *q8);
}

void softmax(std::span<float> x) {
  const GuardedOutput d_x(x.size_bytes(), std::as_bytes(x));
  launch_softmax(d_x.as<float>(), x.size(), 1, nullptr);
  d_x.download(x);
}

void silu_mul(std::span<const float> gate, std::span<const float> up, std::span<float> out) {
  require(gate.size() == up.size() && out.size() == gate.size(), "cuda::silu_mul: sizes differ");
  const DeviceBuffer d_g = upload(gate), d_u = upload(up);
  const GuardedOutput d_out(out.size_bytes());
  launch_silu_mul(d_g.as<float>(), d_u.as<float>(), d_out.as<float>(), out.size(), nullptr);
  d_out.download(out);
}

void add(std::span<float> x, std::span<const float> y) {
  require(x.size() == y.size(), "cuda::add: sizes differ");
  const GuardedOutput d_x(x.size_bytes(), std::as_bytes(x));
  const DeviceBuffer d_y = upload(y);
  launch_add(d_x.as<float>(), d_y.as<float>(), x.size(), nullptr);
  d_x.download(x);
}

void rope_angles(int64_t pos, size_t rope_dim, float freq_base, std::span<const float> freq_factors,
                 std::span<float> cos_out, std::span<float> sin_out) {
  const size_t half = rope_dim / 2;
  require(cos_out.size() >= half && sin_out.size() >= half &&
              (freq_factors.empty() || freq_factors.size() >= half),
          "cuda::rope_angles: spans too small");
  const int32_t pos32 = static_cast<int32_t>(pos);
  const DeviceBuffer d_pos = upload(std::span<const int32_t>(&pos32, 1));
  const DeviceBuffer d_ff = upload(freq_factors);
  const GuardedOutput d_cos(half * sizeof(float)), d_sin(half * sizeof(float));
  launch_rope_angles(d_pos.as<int32_t>(), 1, rope_dim, freq_base,
                     freq_factors.empty() ? nullptr : d_ff.as<float>(), d_cos.as<float>(),
                     d_sin.as<float>(), nullptr);
  d_cos.download(cos_out.first(half));
  d_sin.download(sin_out.first(half));
}

void rope_normal(std::span<float> x, size_t n_heads, size_t head_dim, size_t rope_dim,
                 std::span<const float> cos, std::span<const float> sin) {
  require(x.size() == n_heads * head_dim && rope_dim <= head_dim && cos.size() >= rope_dim / 2 &&
              sin.size() >= rope_dim / 2,
          "cuda::rope_normal: sizes disagree");
  const GuardedOutput d_x(x.size_bytes(), std::as_bytes(x));
  const DeviceBuffer d_cos = upload(cos.first(rope_dim / 2));
  const DeviceBuffer d_sin = upload(sin.first(rope_dim / 2));
  launch_rope_normal(d_x.as<float>(), 1, n_heads, head_dim, rope_dim, d_cos.as<float>(),
                     d_sin.as<float>(), nullptr);
  d_x.download(x);
}

void rope_kv_append(std::span<float> q, std::span<const float> k, std::span<const float> v,
                    size_t n_heads, size_t n_kv_heads, size_t head_dim, size_t rope_dim,
                    std::span<const float> cos, std::span<const float> sin,
                    std::span<uint16_t> k_out, std::span<uint16_t> v_out) {
  const size_t kv_dim = n_kv_heads * head_dim;
  require(q.size() == n_heads * head_dim && k.size() == kv_dim && v.size() == kv_dim &&
              k_out.size() == kv_dim && v_out.size() == kv_dim && rope_dim <= head_dim &&
              cos.size() >= rope_dim / 2 && sin.size() >= rope_dim / 2,
          "cuda::rope_kv_append: sizes disagree");
  const int32_t zero = 0;
  const GuardedOutput d_q(q.size_bytes(), std::as_bytes(q));
  const DeviceBuffer d_k = upload(k), d_v = upload(v);
  const DeviceBuffer d_cos = upload(cos.first(rope_dim / 2));
  const DeviceBuffer d_sin = upload(sin.first(rope_dim / 2));
  const DeviceBuffer d_zero = upload(std::span<const int32_t>(&zero, 1));
  const GuardedOutput d_kc(k_out.size_bytes()), d_vc(v_out.size_bytes());
  launch_rope_kv_append(d_q.as<float>(), d_k.as<float>(), d_v.as<float>(), 1, n_heads, n_kv_heads,
                        head_dim, rope_dim, d_cos.as<float>(), d_sin.as<float>(),
                        d_zero.as<int32_t>(), d_zero.as<int32_t>(), 1, d_kc.as<uint16_t>(),
                        d_vc.as<uint16_t>(), nullptr);
  d_q.download(q);
  d_kc.download(k_out);
  d_vc.download(v_out);
}

void f32_to_f16_row(std::span<const float> x, std::span<uint16_t> out) {
  require(x.size() == out.size(), "cuda::f32_to_f16_row: sizes differ");
  const int32_t zero = 0;
  const DeviceBuffer d_x = upload(x), d_zero = upload(std::span<const int32_t>(&zero, 1));
  const GuardedOutput d_k(out.size_bytes()), d_v(out.size_bytes());
  launch_kv_append(d_x.as<float>(), d_x.as<float>(), d_zero.as<int32_t>(), d_zero.as<int32_t>(), 1,
                   x.size(), 1, d_k.as<uint16_t>(), d_v.as<uint16_t>(), nullptr);
  std::vector<uint16_t> v_out(out.size());
  d_v.download(std::span<uint16_t>(v_out));
  d_k.download(out);
  require(std::equal(v_out.begin(), v_out.end(), out.begin()),
          "cuda::f32_to_f16_row: the K and V rows of the append differ");
}

void attention(std::span<const float> q, std::span<const uint16_t> k_cache,
               std::span<const uint16_t> v_cache, std::span<const int32_t> seq,
               std::span<const int32_t> pos, const AttentionShape& shape, std::span<float> out,
               AttentionPath path) {
  const size_t n = seq.size(), q_dim = shape.n_heads * shape.head_dim;
  const size_t kv_dim = shape.n_kv_heads * shape.head_dim;
  require(pos.size() == n && q.size() == n * q_dim && out.size() == n * q_dim &&
              k_cache.size() == v_cache.size() && k_cache.size() % (shape.n_ctx * kv_dim) == 0,
          "cuda::attention: sizes disagree");
  const DeviceBuffer d_q = upload(q), d_k = upload(k_cache), d_v = upload(v_cache);
  const DeviceBuffer d_seq = upload(seq), d_pos = upload(pos);
  const GuardedOutput d_out(out.size_bytes());
  if (path == AttentionPath::kSplit) {
    const GuardedOutput scratch(attention_split_scratch_floats(shape, n) * sizeof(float));
    launch_attention_split(d_q.as<float>(), d_k.as<uint16_t>(), d_v.as<uint16_t>(),
                           d_seq.as<int32_t>(), d_pos.as<int32_t>(), n, shape, scratch.as<float>(),
                           d_out.as<float>(), nullptr);
    scratch.download(std::span<float>());  // checks the scratch guards too
  } else {
    for (size_t i = 0; i < n; ++i) {
      require(seq[i] == seq[0], "cuda::attention: the tiled path needs one sequence");
    }
    launch_attention_tiled(d_q.as<float>(), d_k.as<uint16_t>(), d_v.as<uint16_t>(),
                           n == 0 ? 0 : seq[0], d_pos.as<int32_t>(), n, shape, d_out.as<float>(),
                           nullptr);
  }
  d_out.download(out);
}

}  // namespace kiln::cuda
