anvil_unit_test(models_test SOURCES models_test.cpp LIBS anvil_models TORCH)
anvil_unit_test(omp_pool_test SOURCES omp_pool_test.cpp LIBS anvil_models TORCH)
