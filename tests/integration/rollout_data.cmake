# Dynamic sampling and debug rollout data of the RL job (slime flags).
anvil_integration_test(integration_rollout_data test_rollout_data.py)
