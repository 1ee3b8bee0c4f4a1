# Builds the libFuzzer harnesses with clang as an external project (tests/fuzz/project)
# and runs each for a short, fixed time from a committed seed corpus (ctest label: fuzz).
# A harness whose sources are missing or placeholders is skipped (project/harnesses.cmake).
option(ANVIL_BUILD_FUZZ "Build the libFuzzer harnesses with clang" ON)
if(NOT ANVIL_BUILD_FUZZ)
  return()
endif()
find_program(ANVIL_CLANGXX NAMES clang++ clang++-19 clang++-18 clang++-17 clang++-16 clang++-15
                                  clang++-14)
if(NOT ANVIL_CLANGXX)
  message(WARNING "anvil: clang++ not found; fuzz tests are not built")
  return()
endif()
include(ExternalProject)
include(${CMAKE_CURRENT_SOURCE_DIR}/project/harnesses.cmake)

set(ANVIL_FUZZ_BIN ${CMAKE_BINARY_DIR}/fuzz)
set(_fuzz_args -DCMAKE_CXX_COMPILER=${ANVIL_CLANGXX} -DCMAKE_BUILD_TYPE=Release -G Ninja)
if(ANVIL_CCACHE)
  # CCACHE_BASEDIR / CCACHE_SLOPPINESS reach the inner build through the environment.
  list(APPEND _fuzz_args -DCMAKE_CXX_COMPILER_LAUNCHER=${ANVIL_CCACHE})
endif()
ExternalProject_Add(anvil_fuzz
  SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR}/project
  BINARY_DIR ${ANVIL_FUZZ_BIN}
  CMAKE_ARGS ${_fuzz_args}
  # The inner build is a no-op when nothing changed; always running it is what makes an
  # edit to any harness or anvil source rebuild the fuzzers.
  BUILD_ALWAYS ON
  USES_TERMINAL_BUILD ON
  INSTALL_COMMAND "")

foreach(name IN LISTS ANVIL_FUZZ_HARNESSES)
  anvil_fuzz_harness_sources(${name} ${PROJECT_SOURCE_DIR} _srcs)
  if(NOT _srcs)
    continue()
  endif()
  # libFuzzer adds what it finds to the first corpus directory, so it runs on a copy in the
  # build tree and the committed seeds stay as they are.
  set(_work ${CMAKE_BINARY_DIR}/fuzz-corpus/${name})
  set(_seeds ${CMAKE_CURRENT_SOURCE_DIR}/corpus/${name})
  add_test(NAME fuzz_${name}
    COMMAND bash -c "set -e; mkdir -p '${_work}'; cp -n '${_seeds}'/* '${_work}'/; exec '${ANVIL_FUZZ_BIN}/fuzz_${name}' -max_total_time=20 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 '${_work}'")
  set_tests_properties(fuzz_${name} PROPERTIES LABELS fuzz TIMEOUT 300
    ENVIRONMENT "ASAN_OPTIONS=detect_leaks=0:abort_on_error=0;UBSAN_OPTIONS=print_stacktrace=1")
endforeach()
