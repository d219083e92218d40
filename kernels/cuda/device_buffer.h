// An owning device allocation (plain cudaMalloc, never managed memory), RAII.
#pragma once

#include <cstddef>

namespace kiln::cuda {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  // Allocates `bytes` on the current device; throws std::runtime_error naming the size, the
  // purpose and the free memory when it does not fit.
  DeviceBuffer(size_t bytes, const char* what);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  size_t size() const { return size_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

// Free and total bytes of the current device.
void device_memory_info(size_t& free_bytes, size_t& total_bytes);

}  // namespace kiln::cuda
