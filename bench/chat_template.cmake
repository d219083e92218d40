# kiln-chat-template-bench: time to render a chat prompt (per request, before
# tokenizing) for real templates and conversation sizes.
add_executable(kiln-chat-template-bench ${CMAKE_CURRENT_LIST_DIR}/chat_template_bench.cpp)
target_link_libraries(kiln-chat-template-bench PRIVATE kiln_options kiln_tokenizer benchmark::benchmark)
target_compile_definitions(kiln-chat-template-bench PRIVATE KILN_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
