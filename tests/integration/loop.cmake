# The training loop: `anvil train` / `anvil train-async` in one process (metrics hub,
# one-step-off async, colocated offload of the train roles, flag errors).
anvil_integration_test(integration_loop test_loop.py)
