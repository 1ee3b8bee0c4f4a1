anvil_unit_test(reward_test SOURCES reward_test.cpp LIBS anvil_reward anvil_engine TORCH)
