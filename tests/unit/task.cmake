anvil_unit_test(task_test SOURCES task_test.cpp LIBS anvil_tasks)
