# safetensors: header validation, reader, sharded writer (unit), and the copy tool used by
# tests/parity/test_safetensors_parity.py.
anvil_unit_test(safetensors_test SOURCES safetensors_test.cpp LIBS anvil_models TORCH)

add_executable(safetensors_tool safetensors_tool.cpp)
target_link_libraries(safetensors_tool PRIVATE anvil_models)
set_target_properties(safetensors_tool PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
anvil_use_torch_pch(safetensors_tool)
