# Which fuzz harnesses can be built: a harness is skipped while its harness file or any of
# the sources it compiles is missing or still a "// placeholder" stub (so one engineer's
# harness never blocks another's). Shared by tests/fuzz/fuzz.cmake (which registers the
# ctest entries) and tests/fuzz/project/CMakeLists.txt (which builds them), so both agree.
#
# anvil_fuzz_harness_sources(<name> <root> <out_var>) sets <out_var> to the absolute source
# list of harness <name>, or to "" when it must be skipped. Each file is added to
# CMAKE_CONFIGURE_DEPENDS so replacing a placeholder re-runs the configure step.

set(ANVIL_FUZZ_HARNESSES safetensors_header tokenizer)

function(anvil_fuzz_harness_sources name root out_var)
  if(name STREQUAL "safetensors_header")
    set(srcs tests/fuzz/fuzz_safetensors_header.cpp backends/models/safetensors_format.cpp)
  elseif(name STREQUAL "tokenizer")
    set(srcs tests/fuzz/fuzz_tokenizer.cpp rollout/data/unicode.cpp rollout/data/tokenizer.cpp
             rollout/data/bpe_trainer.cpp)
  else()
    message(FATAL_ERROR "anvil: unknown fuzz harness '${name}'")
  endif()
  set(out "")
  foreach(s IN LISTS srcs)
    set(f "${root}/${s}")
    set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${f}")
    if(NOT EXISTS "${f}")
      message(STATUS "anvil: fuzz_${name} skipped: ${s} is missing")
      set(${out_var} "" PARENT_SCOPE)
      return()
    endif()
    file(READ "${f}" text)
    string(FIND "${text}" "// placeholder" at)
    if(NOT at EQUAL -1)
      message(STATUS "anvil: fuzz_${name} skipped: ${s} is a placeholder")
      set(${out_var} "" PARENT_SCOPE)
      return()
    endif()
    list(APPEND out "${f}")
  endforeach()
  set(${out_var} "${out}" PARENT_SCOPE)
endfunction()
