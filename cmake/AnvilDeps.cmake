# Debian-packaged dependencies. Each becomes an imported target named anvil::<name> so
# the rest of the tree never spells out include paths or library files.
find_package(PkgConfig REQUIRED)
find_package(Threads REQUIRED)
find_package(fmt REQUIRED)
find_package(spdlog REQUIRED)
find_package(nlohmann_json REQUIRED)
find_package(yaml-cpp REQUIRED)

pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
add_library(anvil::pcre2 ALIAS PkgConfig::PCRE2)
pkg_check_modules(UTF8PROC REQUIRED IMPORTED_TARGET libutf8proc)
add_library(anvil::utf8proc ALIAS PkgConfig::UTF8PROC)

# CLI11 is header-only; Debian builds cpp-httplib's definitions into libcpp-httplib.so
# (its httplib.h only declares them), so link that library when it exists.
find_path(CLI11_INCLUDE_DIR CLI/CLI.hpp REQUIRED)
add_library(anvil_cli11 INTERFACE)
target_include_directories(anvil_cli11 SYSTEM INTERFACE ${CLI11_INCLUDE_DIR})
add_library(anvil::cli11 ALIAS anvil_cli11)

find_path(HTTPLIB_INCLUDE_DIR httplib.h REQUIRED)
add_library(anvil_httplib INTERFACE)
target_include_directories(anvil_httplib SYSTEM INTERFACE ${HTTPLIB_INCLUDE_DIR})
find_library(HTTPLIB_LIB cpp-httplib)
if(HTTPLIB_LIB)
  target_link_libraries(anvil_httplib INTERFACE ${HTTPLIB_LIB})
endif()
target_link_libraries(anvil_httplib INTERFACE Threads::Threads)
add_library(anvil::httplib ALIAS anvil_httplib)

# CAF 0.17 ships no CMake config (see ../shared/reference/caf-0.17.md).
find_path(CAF_INCLUDE_DIR caf/all.hpp REQUIRED)
find_library(CAF_CORE_LIB caf_core REQUIRED)
find_library(CAF_IO_LIB caf_io REQUIRED)
find_library(CAF_OPENSSL_LIB caf_openssl)
add_library(anvil_caf INTERFACE)
target_include_directories(anvil_caf SYSTEM INTERFACE ${CAF_INCLUDE_DIR})
target_link_libraries(anvil_caf INTERFACE ${CAF_IO_LIB} ${CAF_CORE_LIB} Threads::Threads)
add_library(anvil::caf ALIAS anvil_caf)

# gRPC + protobuf from Debian (CMake configs are shipped for both).
find_package(Protobuf REQUIRED)
find_package(gRPC CONFIG REQUIRED)
find_program(ANVIL_GRPC_CPP_PLUGIN grpc_cpp_plugin REQUIRED)

if(ANVIL_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
