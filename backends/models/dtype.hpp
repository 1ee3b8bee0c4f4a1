// safetensors dtypes <-> LibTorch scalar types.
#pragma once

#include "backends/models/safetensors_format.hpp"

#include <c10/core/ScalarType.h>

namespace anvil::models {

c10::ScalarType to_scalar_type(DType dtype);
// Throws anvil::Error for scalar types safetensors cannot store (complex, quantized, ...).
DType from_scalar_type(c10::ScalarType type);

}  // namespace anvil::models
