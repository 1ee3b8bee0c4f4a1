# Apache Arrow + Parquet C++ from the pyarrow wheel in .venv (scripts/setup.sh installs it),
# located through the venv's python like AnvilTorch.cmake locates LibTorch.
#
# Headers: <site-packages>/pyarrow/include holds only arrow/ and parquet/ (Arrow's vendored
# code lives under arrow/vendored), so nothing there can shadow a Debian header and the
# directory is used as it is.
#
# Symbols: the wheel's libparquet exports the ~4,300 C symbols of the OpenSSL it bundles
# (CRYPTO_*, EVP_*, ...) with no symbol versions, and libarrow exports opentelemetry and
# absl symbols. Linked into a process that also loads Debian's libcrypto (gRPC does), those
# definitions would interpose on Debian's. So no anvil target links Arrow: the Parquet
# reader is a small plugin, libanvil_parquet.so, which rollout/data/parquet_reader.cpp opens
# with dlopen(RTLD_LOCAL | RTLD_DEEPBIND): the wheel's symbols never enter the global scope,
# and the plugin's own references bind inside it first. Only C types cross the boundary.
#
# Result: target anvil_parquet_plugin (MODULE) and ANVIL_HAVE_PARQUET. Without pyarrow, or
# with -DANVIL_WITH_PARQUET=OFF, Parquet support compiles out and reading a .parquet file is
# an anvil::Error naming the file.

option(ANVIL_WITH_PARQUET "Read Parquet datasets through the pyarrow wheel's Arrow C++" ON)
set(ANVIL_HAVE_PARQUET OFF)
if(ANVIL_WITH_PARQUET)
  execute_process(
    COMMAND "${ANVIL_PYTHON}" -c
      "import pyarrow as pa; print(pa.get_include()); print(pa.get_library_dirs()[0]); print(pa.__version__); print(pa.cpp_build_info.so_version)"
    OUTPUT_VARIABLE _arrow_out RESULT_VARIABLE _arrow_rc ERROR_VARIABLE _arrow_err
    OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT _arrow_rc EQUAL 0)
    message(STATUS "anvil: pyarrow not importable from ${ANVIL_PYTHON}; Parquet support off")
  else()
    string(REPLACE "\n" ";" _arrow_out "${_arrow_out}")
    list(GET _arrow_out 0 ANVIL_ARROW_INCLUDE)
    list(GET _arrow_out 1 ANVIL_ARROW_LIBDIR)
    list(GET _arrow_out 2 ANVIL_ARROW_VERSION)
    list(GET _arrow_out 3 _so)
    set(ANVIL_ARROW_LIB "${ANVIL_ARROW_LIBDIR}/libarrow.so.${_so}")
    set(ANVIL_PARQUET_LIB "${ANVIL_ARROW_LIBDIR}/libparquet.so.${_so}")
    if(EXISTS "${ANVIL_ARROW_INCLUDE}/parquet/arrow/reader.h" AND EXISTS "${ANVIL_ARROW_LIB}"
       AND EXISTS "${ANVIL_PARQUET_LIB}")
      set(ANVIL_HAVE_PARQUET ON)
      message(STATUS "anvil: Arrow/Parquet ${ANVIL_ARROW_VERSION} at ${ANVIL_ARROW_LIBDIR}")
    else()
      message(STATUS "anvil: pyarrow ${ANVIL_ARROW_VERSION} lacks headers or libparquet; Parquet support off")
    endif()
  endif()
endif()

# anvil_parquet_plugin: see rollout/data/parquet_plugin.cpp. Built in the binary dir's lib/
# and found there at run time (or through ANVIL_PARQUET_PLUGIN).
function(anvil_add_parquet_plugin source)
  if(NOT ANVIL_HAVE_PARQUET)
    return()
  endif()
  add_library(anvil_parquet_plugin MODULE "${source}")
  target_include_directories(anvil_parquet_plugin SYSTEM PRIVATE "${ANVIL_ARROW_INCLUDE}")
  target_include_directories(anvil_parquet_plugin PRIVATE "${CMAKE_SOURCE_DIR}")
  target_link_libraries(anvil_parquet_plugin PRIVATE "${ANVIL_PARQUET_LIB}" "${ANVIL_ARROW_LIB}"
    nlohmann_json::nlohmann_json)
  # Export only the plugin's entry point; everything else (including inline Arrow and
  # libstdc++ template instances) stays hidden.
  set_target_properties(anvil_parquet_plugin PROPERTIES
    OUTPUT_NAME anvil_parquet PREFIX "lib"
    LIBRARY_OUTPUT_DIRECTORY "${CMAKE_BINARY_DIR}/lib"
    CXX_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON)
  # Arrow marks some template instances for export; the version script keeps them local.
  set(_map "${CMAKE_BINARY_DIR}/anvil_parquet.map")
  file(WRITE "${_map}" "{ global: anvil_parquet_*; local: *; };\n")
  target_link_options(anvil_parquet_plugin PRIVATE "-Wl,-rpath,${ANVIL_ARROW_LIBDIR}"
    "-Wl,--no-undefined" "-Wl,--version-script=${_map}")
  set_property(TARGET anvil_parquet_plugin APPEND PROPERTY LINK_DEPENDS "${_map}")
endfunction()
