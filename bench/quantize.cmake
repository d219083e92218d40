# kiln-quantize-bench: reference weight quantizers (kernels/quantize.h), one row at a time,
# reported as float elements quantized per second (what bounds `kiln quantize`).
add_executable(kiln-quantize-bench ${CMAKE_CURRENT_LIST_DIR}/quantize_bench.cpp)
target_link_libraries(kiln-quantize-bench PRIVATE kiln_options kiln_kernels benchmark::benchmark)
