# Resume of an RL job (actors/resume_state): checkpoint lookup, save requests, errors.
anvil_unit_test(resume_state_test SOURCES resume_state_test.cpp LIBS anvil_resume_state)
