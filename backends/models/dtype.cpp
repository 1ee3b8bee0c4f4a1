#include "backends/models/dtype.hpp"

#include "backends/common/error.hpp"

namespace anvil::models {

c10::ScalarType to_scalar_type(DType d) {
  switch (d) {
    case DType::BOOL:
      return c10::kBool;
    case DType::U8:
      return c10::kByte;
    case DType::I8:
      return c10::kChar;
    case DType::F8_E5M2:
      return c10::ScalarType::Float8_e5m2;
    case DType::F8_E4M3:
      return c10::ScalarType::Float8_e4m3fn;
    case DType::I16:
      return c10::kShort;
    case DType::U16:
      return c10::ScalarType::UInt16;
    case DType::F16:
      return c10::kHalf;
    case DType::BF16:
      return c10::kBFloat16;
    case DType::I32:
      return c10::kInt;
    case DType::U32:
      return c10::ScalarType::UInt32;
    case DType::F32:
      return c10::kFloat;
    case DType::F64:
      return c10::kDouble;
    case DType::I64:
      return c10::kLong;
    case DType::U64:
      return c10::ScalarType::UInt64;
  }
  ANVIL_CHECK(false);
  return c10::kFloat;
}

DType from_scalar_type(c10::ScalarType t) {
  for (DType d : {DType::BOOL, DType::U8, DType::I8, DType::F8_E5M2, DType::F8_E4M3, DType::I16,
                  DType::U16, DType::F16, DType::BF16, DType::I32, DType::U32, DType::F32,
                  DType::F64, DType::I64, DType::U64}) {
    if (to_scalar_type(d) == t) return d;
  }
  fail("scalar type {} cannot be stored in safetensors", c10::toString(t));
}

}  // namespace anvil::models
