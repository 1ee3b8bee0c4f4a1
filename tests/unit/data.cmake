# Data pipeline: datasets, order and cursor, conversation loss masks, prefetch queue.
anvil_unit_test(data_test SOURCES data_test.cpp LIBS anvil_data)
if(ANVIL_HAVE_PARQUET)
  target_compile_definitions(data_test PRIVATE ANVIL_TEST_HAVE_PARQUET=1
    ANVIL_TEST_PARQUET_PLUGIN="$<TARGET_FILE:anvil_parquet_plugin>")
endif()
