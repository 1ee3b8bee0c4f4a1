# Metrics sinks (runtime/metrics/): TensorBoard files read back by the tensorboard package,
# metrics.jsonl, config.yaml, and the dashboard checked in headless Chromium.
add_executable(metrics_tool metrics_tool.cpp)
target_link_libraries(metrics_tool PRIVATE anvil_metrics anvil::cli11)
set_target_properties(metrics_tool PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
anvil_integration_test(integration_metrics test_metrics.py)
