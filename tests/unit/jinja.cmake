anvil_unit_test(jinja_test SOURCES jinja_test.cpp LIBS anvil_jinja)
# jinja_render: JSONL {"template", "context"} in, JSONL {"ok", "text" | "error"} out; the
# chat-template parity test drives it.
add_executable(jinja_render ${PROJECT_SOURCE_DIR}/rollout/data/jinja/tools/jinja_render.cpp)
target_link_libraries(jinja_render PRIVATE anvil_jinja nlohmann_json::nlohmann_json)
set_target_properties(jinja_render PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
