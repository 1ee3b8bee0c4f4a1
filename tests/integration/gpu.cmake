# The RL job on a CUDA device (skips without one; run on the GPU machine).
anvil_integration_test(integration_gpu_job test_gpu_job.py)
