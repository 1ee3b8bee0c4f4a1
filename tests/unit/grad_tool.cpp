// Test tool: gradients of sum(token log-probs) over a packed batch, per parameter, written
// as safetensors with HF names. Usage: grad_tool MODEL_DIR IN.jsonl OUT.safetensors
// Each input line is {"tokens": [...]}; the sequences are packed into one forward.
#include "backends/models/decoder.hpp"
#include "backends/models/safetensors.hpp"
#include "backends/train/logprobs.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/autograd.h>

#include <fstream>
#include <iostream>

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: grad_tool MODEL_DIR IN.jsonl OUT.safetensors\n";
    return 2;
  }
  at::set_num_threads(2);
  auto model = anvil::models::DecoderModel::from_pretrained(argv[1], at::kFloat, at::kCPU);
  for (auto& p : model->parameters()) p.requires_grad_(true);
  std::vector<std::vector<int64_t>> seqs;
  std::ifstream in(argv[2]);
  std::string line;
  while (std::getline(in, line)) seqs.push_back(nlohmann::json::parse(line)["tokens"]);
  auto batch = anvil::models::PackedBatch::pack(seqs, at::kCPU);
  at::Tensor hidden = model->forward_hidden(batch);
  anvil::train::NextTokenIndex next = anvil::train::next_token_index(seqs);
  anvil::train::LogProbOptions o;
  o.chunk_tokens = 7;  // several chunks: the chunked path must be differentiable
  at::Tensor lp = anvil::train::token_logprobs(hidden.index_select(0, next.rows),
                                               model->lm_head_weight(), next.targets, o)
                      .logprobs;
  auto grads = torch::autograd::grad({lp.sum()}, model->parameters());
  anvil::models::CheckpointWriter w(std::filesystem::path(argv[3]).parent_path());
  // One file named by the caller: write into a directory, then rename model.safetensors.
  for (size_t i = 0; i < grads.size(); ++i) w.add(model->specs()[i].name, grads[i]);
  w.finish();
  std::filesystem::rename(std::filesystem::path(argv[3]).parent_path() / "model.safetensors",
                          argv[3]);
  return 0;
}
