# Builds the libFuzzer harnesses with clang as an external project and runs each for a
# short, fixed time from a committed seed corpus (ctest label: fuzz).
include(ExternalProject)
find_program(ANVIL_CLANGXX clang++)
if(NOT ANVIL_CLANGXX)
  message(WARNING "anvil: clang++ not found; fuzz tests are not built")
  return()
endif()
set(FUZZ_BIN ${CMAKE_BINARY_DIR}/fuzz)
ExternalProject_Add(anvil_fuzz
  SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR}/project
  BINARY_DIR ${FUZZ_BIN}
  CMAKE_ARGS -DCMAKE_CXX_COMPILER=${ANVIL_CLANGXX} -DCMAKE_BUILD_TYPE=Release
             -DCMAKE_CXX_COMPILER_LAUNCHER=${ANVIL_CCACHE}
  BUILD_ALWAYS ON
  INSTALL_COMMAND "")
foreach(name safetensors_header tokenizer)
  set(work ${CMAKE_BINARY_DIR}/fuzz-corpus/${name})
  add_test(NAME fuzz_${name}
    COMMAND ${CMAKE_COMMAND} -E env ASAN_OPTIONS=detect_leaks=0
      bash -c "mkdir -p ${work} && cp -n ${CMAKE_CURRENT_SOURCE_DIR}/corpus/${name}/* ${work}/ 2>/dev/null; exec ${FUZZ_BIN}/fuzz_${name} -max_total_time=20 -rss_limit_mb=2048 -print_final_stats=1 ${work}")
  set_tests_properties(fuzz_${name} PROPERTIES LABELS fuzz TIMEOUT 300)
endforeach()
