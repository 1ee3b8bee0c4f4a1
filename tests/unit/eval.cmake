anvil_unit_test(eval_test SOURCES eval_test.cpp LIBS anvil_eval TORCH)
