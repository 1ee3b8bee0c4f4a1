# safetensors interoperability with the Python `safetensors` package, through
# build/tests/safetensors_tool (registered in tests/unit/safetensors.cmake).
anvil_parity_test(parity_safetensors test_safetensors_parity.py)
