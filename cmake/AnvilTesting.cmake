# anvil_unit_test(name SOURCES ... LIBS ... [TORCH]): a GoogleTest executable whose tests
# ctest discovers (label: unit). TORCH reuses the LibTorch precompiled header.
include(GoogleTest)
function(anvil_unit_test name)
  cmake_parse_arguments(T "TORCH" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE ${T_LIBS} GTest::gtest GTest::gtest_main)
  if(T_TORCH)
    anvil_use_torch_pch(${name})
  endif()
  gtest_discover_tests(${name} PROPERTIES LABELS unit DISCOVERY_TIMEOUT 60)
endfunction()
