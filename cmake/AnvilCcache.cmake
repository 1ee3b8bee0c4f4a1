# ccache for every C/C++ compile. scripts/build.sh exports CCACHE_BASEDIR (the source
# root) so absolute paths are rewritten and a fresh clone in another directory still hits,
# and CCACHE_SLOPPINESS so precompiled headers are cacheable.
find_program(ANVIL_CCACHE ccache)
if(ANVIL_CCACHE)
  set(CMAKE_C_COMPILER_LAUNCHER ${ANVIL_CCACHE})
  set(CMAKE_CXX_COMPILER_LAUNCHER ${ANVIL_CCACHE})
  message(STATUS "anvil: compiling through ${ANVIL_CCACHE}")
endif()
