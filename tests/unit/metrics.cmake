# Metrics sinks and the dashboard (runtime/metrics/).
anvil_unit_test(metrics_test SOURCES metrics_test.cpp LIBS anvil_metrics anvil::httplib)
