// Helpers shared by the role implementations (roles.cpp, train_role.cpp): JSON parsing,
// weight views for the data plane, sample conversion, model loading. Internal to actors/.
#pragma once

#include "actors/job_options.hpp"
#include "backends/models/decoder.hpp"
#include "backends/train/trainer.hpp"
#include "runtime/data_plane.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace anvil::actors::detail {

// Parses `text`; a malformed document fails naming `what`.
nlohmann::json parse_json(const std::string& text, const char* what);
// A number, or its text for inf / NaN (JSON has neither).
nlohmann::json json_number(double v);
// The safetensors dtype name of a tensor dtype that can cross the data plane.
std::string st_dtype(at::ScalarType t);
// The model's parameters as borrowed views, in spec order (contiguous CPU tensors kept in `keep`).
std::vector<runtime::TensorView> weight_views(const models::DecoderModel& model,
                                              std::vector<at::Tensor>& keep);
// A view of `tensor` as a contiguous host copy, which `keep` holds alive.
runtime::TensorView host_view(const std::string& name, const at::Tensor& tensor,
                              std::vector<at::Tensor>& keep);
// CRC-32C over every weight's bytes, in spec order.
uint32_t weights_checksum(const models::DecoderModel& model);
// The "targets" list of a {"targets": ["host:port", ...]} request.
std::vector<std::string> targets_of(const std::string& targets_json, const char* what);
// Splits a rollout by prompt group over `n` targets (contiguous ranges of groups).
std::vector<runtime::Rollout> split_by_group(const runtime::Rollout& r, size_t n);
train::TrainSample to_train_sample(const runtime::WireSample& s);
// The job's --device, checked: CUDA needs a visible device (the worker gives each role
// its devices through CUDA_VISIBLE_DEVICES, so "cuda" is the role's first one).
at::Device role_device(const JobOptions& job);
// The job's --model on --device in --dtype.
std::unique_ptr<models::DecoderModel> load_model(const JobOptions& job);

}  // namespace anvil::actors::detail

namespace anvil::actors {
struct RoleContext;
class Role;
// The train role (train_role.cpp).
std::unique_ptr<Role> make_train_role(const RoleContext& context, const JobOptions& job);
}  // namespace anvil::actors
