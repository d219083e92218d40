# kiln-grammar-bench: structured generation cost per token (token mask from a
# JSON Schema grammar) on the default model's vocabulary; see bench/RESULTS.md.
add_executable(kiln-grammar-bench ${CMAKE_CURRENT_LIST_DIR}/grammar_bench.cpp)
target_link_libraries(kiln-grammar-bench PRIVATE kiln_options kiln_sampler kiln_tokenizer
                                                 benchmark::benchmark)
target_compile_definitions(kiln-grammar-bench PRIVATE KILN_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
