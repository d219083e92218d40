# kiln-kernel-bench: dot products, matvec (decode) and matmul (prefill) per weight type,
# reported as weight bytes/s and as a fraction of the read bandwidth the binary measures.
add_executable(kiln-kernel-bench ${CMAKE_CURRENT_LIST_DIR}/kernel_bench.cpp)
target_link_libraries(kiln-kernel-bench PRIVATE kiln_options kiln_kernels benchmark::benchmark)
