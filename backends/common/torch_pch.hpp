// Precompiled header for translation units that use LibTorch. Only .cpp files see it
// (through CMake's target_precompile_headers); public headers include the narrow
// <ATen/core/Tensor.h> instead.
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>
