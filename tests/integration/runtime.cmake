# Actor runtime: head + workers + role processes on localhost (actors/, runtime/).
anvil_integration_test(integration_runtime test_runtime.py)
