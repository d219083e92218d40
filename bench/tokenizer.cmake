# kiln-tokenizer-bench: tokenizer throughput (MB/s of input text) on English
# prose and on C++ code, for the default model's byte-level BPE and for a
# SentencePiece vocabulary; plus the pre-tokenizer split alone.
add_executable(kiln-tokenizer-bench ${CMAKE_CURRENT_LIST_DIR}/tokenizer_bench.cpp)
target_link_libraries(kiln-tokenizer-bench PRIVATE kiln_options kiln_tokenizer benchmark::benchmark)
target_compile_definitions(kiln-tokenizer-bench PRIVATE KILN_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
