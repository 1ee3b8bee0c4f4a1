# Unit tests of the compute layer alone (ANVIL_COMPUTE_ONLY builds on GPU machines): the
# tests whose libraries need nothing but LibTorch, spdlog and nlohmann-json. Tests that
# need a CUDA device skip themselves where there is none.
include(AnvilTesting)
set(_dir ${CMAKE_CURRENT_LIST_DIR})
anvil_unit_test(models_test SOURCES ${_dir}/models_test.cpp LIBS anvil_models TORCH)
anvil_unit_test(train_test SOURCES ${_dir}/train_test.cpp LIBS anvil_train TORCH)
anvil_unit_test(trainer_test SOURCES ${_dir}/trainer_test.cpp LIBS anvil_train TORCH)
# The FSDP rank tool (tests/integration/fsdp_tool.cpp) where the distributed layer builds:
# on a GPU machine it runs the NCCL group with the model on the device.
if(TARGET anvil_fsdp)
  add_executable(fsdp_tool ${_dir}/../integration/fsdp_tool.cpp)
  target_link_libraries(fsdp_tool PRIVATE anvil_fsdp nlohmann_json::nlohmann_json)
  set_target_properties(fsdp_tool PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  anvil_use_torch_pch(fsdp_tool)
endif()
