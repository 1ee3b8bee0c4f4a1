# LibTorch from the pip wheel torch==2.11.0 in the project's .venv, located through
# torch.utils.cmake_prefix_path.
#
# We do not use find_package(Torch): its config puts <site-packages>/torch/include on the
# include path, and that directory also carries fmt 12 and protobuf headers which would
# shadow Debian's fmt 9 (used by spdlog) and protobuf 3.21 (used by gRPC). Instead we make a
# curated include root holding only ATen/, c10/, torch/ and caffe2/ (symlinks) and build the
# imported target ourselves. The wheel links its own protobuf/fmt with hidden visibility;
# tests/unit/smoke_link_test.cpp proves that no symbol clashes at run time.

set(ANVIL_PYTHON "${CMAKE_SOURCE_DIR}/.venv/bin/python" CACHE FILEPATH "Python with torch==2.11.0")
if(NOT EXISTS "${ANVIL_PYTHON}")
  message(FATAL_ERROR "anvil: ${ANVIL_PYTHON} not found; run scripts/setup.sh first")
endif()
execute_process(
  COMMAND "${ANVIL_PYTHON}" -c "import torch.utils, torch; print(torch.utils.cmake_prefix_path); print(torch.__version__)"
  OUTPUT_VARIABLE _torch_out RESULT_VARIABLE _torch_rc ERROR_VARIABLE _torch_err
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR "anvil: cannot import torch from ${ANVIL_PYTHON}: ${_torch_err}")
endif()
string(REPLACE "\n" ";" _torch_out "${_torch_out}")
list(GET _torch_out 0 ANVIL_TORCH_CMAKE_PREFIX)
list(GET _torch_out 1 ANVIL_TORCH_VERSION)
# cmake_prefix_path = <site-packages>/torch/share/cmake
get_filename_component(ANVIL_TORCH_ROOT "${ANVIL_TORCH_CMAKE_PREFIX}/../.." ABSOLUTE)
message(STATUS "anvil: LibTorch ${ANVIL_TORCH_VERSION} at ${ANVIL_TORCH_ROOT}")

set(_inc "${CMAKE_BINARY_DIR}/torch_include")
file(MAKE_DIRECTORY "${_inc}")
foreach(_d ATen c10 torch caffe2)
  file(CREATE_LINK "${ANVIL_TORCH_ROOT}/include/${_d}" "${_inc}/${_d}" SYMBOLIC)
endforeach()

set(_lib "${ANVIL_TORCH_ROOT}/lib")
add_library(anvil_torch INTERFACE)
target_include_directories(anvil_torch SYSTEM INTERFACE
  "${_inc}" "${ANVIL_TORCH_ROOT}/include/torch/csrc/api/include")
target_link_libraries(anvil_torch INTERFACE
  "${_lib}/libtorch_cpu.so" "${_lib}/libc10.so" Threads::Threads)
set(ANVIL_HAVE_CUDA OFF)
if(ANVIL_WITH_CUDA AND EXISTS "${_lib}/libtorch_cuda.so")
  # --no-as-needed: nothing references libtorch_cuda directly, but loading it registers
  # the CUDA kernels with the dispatcher.
  target_link_libraries(anvil_torch INTERFACE
    "-Wl,--no-as-needed" "${_lib}/libtorch_cuda.so" "${_lib}/libc10_cuda.so" "-Wl,--as-needed")
  target_compile_definitions(anvil_torch INTERFACE ANVIL_WITH_CUDA=1)
  set(ANVIL_HAVE_CUDA ON)
endif()
target_link_options(anvil_torch INTERFACE "-Wl,-rpath,${_lib}")
add_library(anvil::torch ALIAS anvil_torch)
message(STATUS "anvil: CUDA kernels linked: ${ANVIL_HAVE_CUDA}")

# One precompiled header for the LibTorch includes, built once and reused by every
# target that calls anvil_use_torch_pch().
set(ANVIL_TORCH_PCH_HEADER "${CMAKE_SOURCE_DIR}/backends/common/torch_pch.hpp")
add_library(anvil_torch_pch STATIC "${CMAKE_SOURCE_DIR}/backends/common/torch_pch.cpp")
target_link_libraries(anvil_torch_pch PUBLIC anvil::torch)
target_include_directories(anvil_torch_pch PUBLIC ${CMAKE_SOURCE_DIR})
target_precompile_headers(anvil_torch_pch PRIVATE "${ANVIL_TORCH_PCH_HEADER}")
function(anvil_use_torch_pch target)
  target_precompile_headers(${target} REUSE_FROM anvil_torch_pch)
endfunction()
