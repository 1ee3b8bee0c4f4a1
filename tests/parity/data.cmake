# Data pipeline: loss masks vs transformers, Parquet vs JSONL, resume, bad rows, render-chat.
anvil_parity_test(parity_data test_data_parity.py)
