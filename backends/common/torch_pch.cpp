// Anchor translation unit for the shared LibTorch precompiled header.
#include "backends/common/torch_pch.hpp"
