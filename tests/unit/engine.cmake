anvil_unit_test(engine_test SOURCES engine_test.cpp LIBS anvil_engine anvil_train TORCH)
