# Runtime layer: checksums, placement, the gRPC data plane, the process supervisor.
anvil_unit_test(runtime_test SOURCES runtime_test.cpp LIBS anvil_runtime anvil_proto)
