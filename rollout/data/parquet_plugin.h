/* The C interface of libanvil_parquet.so, the plugin that reads Parquet files through the
 * pyarrow wheel's Arrow C++ (see cmake/AnvilArrow.cmake for why it is a plugin). Only C
 * types cross it; rollout/data/parquet_reader.cpp is its one caller. */
#ifndef ANVIL_ROLLOUT_DATA_PARQUET_PLUGIN_H_
#define ANVIL_ROLLOUT_DATA_PARQUET_PLUGIN_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ANVIL_PARQUET_ABI_VERSION 1

/* Called once per row, in file order. `row` is 0-based. On success `json` holds the row as
 * a JSON object (UTF-8, `json_len` bytes, columns in schema order) and `error` is NULL; a
 * row that cannot be converted (invalid UTF-8 in a string or binary column) has `json` NULL
 * and `error` naming the column. Return 0 to continue, anything else to stop reading. */
typedef int (*anvil_parquet_row_fn)(void* ctx, int64_t row, const char* json, size_t json_len,
                                     const char* error);

/* Returns ANVIL_PARQUET_ABI_VERSION. */
int anvil_parquet_abi_version(void);

/* Reads `path` row by row. Returns 0 when every row was delivered (or the callback stopped
 * the read), otherwise 1 with a NUL-terminated message in `err` (at most `err_len` bytes):
 * the file cannot be opened, is not Parquet, or a column cannot be decoded. Thread-safe. */
int anvil_parquet_read(const char* path, anvil_parquet_row_fn on_row, void* ctx, char* err,
                       size_t err_len);

#ifdef __cplusplus
}
#endif

#endif /* ANVIL_ROLLOUT_DATA_PARQUET_PLUGIN_H_ */
