# kiln-sampler-bench: the sampling chain's cost per token on a 49152-token
# vocabulary (real logits of the default model when it is there), next to one
# decode step of that model, so the ratio can be read off one run.
add_executable(kiln-sampler-bench ${CMAKE_CURRENT_LIST_DIR}/sampler_bench.cpp)
target_link_libraries(kiln-sampler-bench PRIVATE kiln_options kiln_sampler kiln_engine
                                                 benchmark::benchmark)
target_compile_definitions(kiln-sampler-bench PRIVATE KILN_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
