# Metrics sinks and the dashboard (runtime/metrics/).
anvil_unit_test(metrics_test SOURCES metrics_test.cpp LIBS anvil_metrics anvil::httplib)
# The job's config handling (launcher/job_flags.cpp: YAML keys, contradictions, the resolved
# config.yaml); compiles the launcher's flag sources into the test.
anvil_unit_test(metrics_test_config
  SOURCES metrics_test_config.cpp ${PROJECT_SOURCE_DIR}/launcher/job_flags.cpp
    ${PROJECT_SOURCE_DIR}/launcher/train_flags.cpp ${PROJECT_SOURCE_DIR}/launcher/data_flags.cpp
  LIBS anvil_train anvil_eval anvil_data anvil_reward anvil_metrics yaml-cpp anvil::cli11 TORCH)
target_include_directories(metrics_test_config PRIVATE ${PROJECT_SOURCE_DIR})
