# Resume of an RL job: kill after a checkpoint, --load, bitwise the uninterrupted run
# (in-process and head + 2 workers); bad --load directories named.
anvil_integration_test(integration_resume test_resume.py)
