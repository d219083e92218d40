# kiln-cuda-bench: the CUDA kernels (decode matvec and prefill matmul per weight type, split
# attention), timed with CUDA events and reported as bytes/s and as a fraction of the
# measured device-to-device copy bandwidth. Built with the CUDA backend only; without a
# device it prints "no CUDA device" and exits 0.
if(KILN_HAVE_CUDA)
  add_executable(kiln-cuda-bench ${CMAKE_CURRENT_LIST_DIR}/cuda_bench.cpp)
  target_link_libraries(kiln-cuda-bench PRIVATE kiln_options kiln_kernels_cuda kiln_kernels
                                                benchmark::benchmark)
endif()
