# Unit tests of the compute layer alone (ANVIL_COMPUTE_ONLY builds on GPU machines): the
# tests whose libraries need nothing but LibTorch, spdlog and nlohmann-json. Tests that
# need a CUDA device skip themselves where there is none.
include(AnvilTesting)
set(_dir ${CMAKE_CURRENT_LIST_DIR})
anvil_unit_test(models_test SOURCES ${_dir}/models_test.cpp LIBS anvil_models TORCH)
anvil_unit_test(train_test SOURCES ${_dir}/train_test.cpp LIBS anvil_train TORCH)
anvil_unit_test(trainer_test SOURCES ${_dir}/trainer_test.cpp LIBS anvil_train TORCH)
