# Megatron-style backend (backends/megatron): TP / DP groups of local processes over Gloo.
if(ANVIL_HAVE_DIST)
  add_executable(megatron_tool megatron_tool.cpp)
  target_link_libraries(megatron_tool PRIVATE anvil_megatron nlohmann_json::nlohmann_json)
  set_target_properties(megatron_tool PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  anvil_use_torch_pch(megatron_tool)
  anvil_integration_test(integration_megatron test_megatron.py)
  # Checkpoints between Megatron meshes, FSDP groups and one rank (needs fsdp_tool too).
  anvil_integration_test(integration_reshard test_reshard.py)
endif()
