// Helpers shared by the role implementations; see role_util.hpp.
#include "actors/role_util.hpp"

#include "backends/common/error.hpp"
#include "runtime/crc32c.hpp"

#include <cmath>
#include <cstdlib>

namespace anvil::actors::detail {

nlohmann::json parse_json(const std::string& text, const char* what) {
  try {
    return nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    fail("{}: malformed JSON: {}", what, e.what());
  }
}

// A number, or its text for inf / NaN (JSON has neither).
nlohmann::json json_number(double v) {
  if (std::isfinite(v)) return v;
  return std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf");
}

std::string st_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return "F32";
    case at::kBFloat16:
      return "BF16";
    case at::kHalf:
      return "F16";
    case at::kDouble:
      return "F64";
    default:
      fail("weights: dtype {} cannot be sent", c10::toString(t));
  }
}

// The model's parameters as borrowed views, in spec order (contiguous CPU tensors).
std::vector<runtime::TensorView> weight_views(const models::DecoderModel& model,
                                              std::vector<at::Tensor>& keep) {
  std::vector<runtime::TensorView> views;
  keep.clear();
  const auto& specs = model.specs();
  for (size_t i = 0; i < specs.size(); ++i) {
    at::Tensor t = model.parameters()[i];
    if (!t.defined()) continue;
    views.push_back(host_view(specs[i].name, t, keep));
  }
  return views;
}

runtime::TensorView host_view(const std::string& name, const at::Tensor& tensor,
                              std::vector<at::Tensor>& keep) {
  at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
  keep.push_back(t);
  runtime::TensorView v;
  v.name = name;
  v.dtype = st_dtype(t.scalar_type());
  v.shape = t.sizes().vec();
  v.data = static_cast<const uint8_t*>(t.data_ptr());
  v.bytes = t.nbytes();
  return v;
}

uint32_t weights_checksum(const models::DecoderModel& model) {
  std::vector<at::Tensor> keep;
  uint32_t crc = 0;
  for (const auto& v : weight_views(model, keep)) crc = runtime::crc32c(v.data, v.bytes, crc);
  return crc;
}

std::vector<std::string> targets_of(const std::string& targets_json, const char* what) {
  auto j = parse_json(targets_json, what);
  if (!j.contains("targets") || !j["targets"].is_array()) fail("{}: no 'targets' list", what);
  std::vector<std::string> out;
  for (const auto& t : j["targets"]) {
    if (!t.is_string()) fail("{}: targets must be host:port strings", what);
    out.push_back(t.get<std::string>());
  }
  return out;
}

// Splits a rollout by prompt group over `n` targets (contiguous ranges of groups).
std::vector<runtime::Rollout> split_by_group(const runtime::Rollout& r, size_t n) {
  std::vector<runtime::Rollout> parts(n);
  std::vector<int64_t> groups;
  for (const auto& s : r.samples) {
    if (groups.empty() || groups.back() != s.group_id) groups.push_back(s.group_id);
  }
  size_t g = 0;
  int64_t prev = INT64_MIN;
  for (const auto& s : r.samples) {
    if (s.group_id != prev && prev != INT64_MIN) ++g;
    prev = s.group_id;
    size_t t = groups.empty() ? 0 : g * n / groups.size();
    parts[t].samples.push_back(s);
  }
  for (auto& p : parts) p.rollout_id = r.rollout_id;
  return parts;
}

train::TrainSample to_train_sample(const runtime::WireSample& s) {
  train::TrainSample t;
  t.tokens = s.tokens;
  t.response_length = s.response_length;
  t.loss_mask = s.loss_mask;
  t.reward = s.reward;
  t.rollout_logprobs = s.rollout_logprobs;
  t.weight_version = static_cast<int64_t>(s.weight_version);
  return t;
}

at::Device role_device(const JobOptions& job) {
  at::Device device(at::kCPU);
  try {
    device = at::Device(job.device);
  } catch (const std::exception&) {
    fail("--device '{}' is not a device (cpu, cuda, cuda:N)", job.device);
  }
  if (device.is_cuda() && !at::hasCUDA()) {
    fail("--device {}: no CUDA device is visible to this role (CUDA_VISIBLE_DEVICES='{}')",
         job.device,
         std::getenv("CUDA_VISIBLE_DEVICES") ? std::getenv("CUDA_VISIBLE_DEVICES") : "");
  }
  if (!device.is_cpu() && !device.is_cuda()) fail("--device {}: only cpu and cuda", job.device);
  return device;
}

std::unique_ptr<models::DecoderModel> load_model(const JobOptions& job) {
  if (job.model.empty()) fail("--model is required");
  return models::DecoderModel::from_pretrained(job.model, models::parse_dtype_name(job.dtype),
                                               role_device(job));
}

}  // namespace anvil::actors::detail
