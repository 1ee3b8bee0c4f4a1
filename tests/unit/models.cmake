anvil_unit_test(models_test SOURCES models_test.cpp LIBS anvil_models TORCH)
