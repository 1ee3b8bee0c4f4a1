#include "runtime/data_plane.hpp"

#include "backends/common/error.hpp"
#include "proto/anvil.grpc.pb.h"
#include "runtime/crc32c.hpp"
#include "runtime/grpc_util.hpp"
#include "runtime/shared_memory.hpp"

#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>

namespace anvil::runtime {

size_t dtype_element_size(const std::string& dtype) {
  static const std::unordered_map<std::string, size_t> sizes = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2},    {"I64", 8},
      {"I32", 4}, {"I16", 2}, {"I8", 1},  {"U8", 1},      {"BOOL", 1},
      {"U16", 2}, {"U32", 4}, {"U64", 8}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
  auto it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

namespace {

// ---- weights ---------------------------------------------------------------------------

grpc::Status invalid(const std::string& what) {
  return {grpc::StatusCode::INVALID_ARGUMENT, "WeightTransfer.Push: " + what};
}

// Checked product of a shape; false on a negative dimension or overflow.
bool shape_bytes(const google::protobuf::RepeatedField<int64_t>& shape, size_t element,
                 uint64_t* out) {
  unsigned __int128 n = element;
  for (int64_t d : shape) {
    if (d < 0) return false;
    n *= static_cast<uint64_t>(d);
    if (n > (static_cast<unsigned __int128>(1) << 62)) return false;
  }
  *out = static_cast<uint64_t>(n);
  return true;
}

class WeightService final : public proto::WeightTransfer::Service {
 public:
  WeightService(std::string token, WeightReceiver::Options options,
                std::function<void(const WeightVersion&)> apply)
      : token_(std::move(token)), options_(std::move(options)), apply_(std::move(apply)) {}

  grpc::Status Push(grpc::ServerContext* context, grpc::ServerReader<proto::WeightChunk>* reader,
                    proto::WeightAck* ack) override {
    if (auto s = check_token(*context, token_, "WeightTransfer.Push"); !s.ok()) return s;
    WeightVersion version;
    grpc::Status status = receive(reader, ack, version);
    // Keep the buffers for the next version (same tensor names and sizes: no fresh memory).
    std::lock_guard<std::mutex> lock(spare_mutex_);
    spare_.clear();
    for (auto& t : version.tensors) spare_[t.name] = std::move(t.bytes);
    return status;
  }

  uint64_t applied() const { return applied_; }

 private:
  grpc::Status receive(grpc::ServerReader<proto::WeightChunk>* reader, proto::WeightAck* ack,
                       WeightVersion& version) {
    std::unordered_map<std::string, size_t> index;  // name -> position in version.tensors
    std::unordered_map<std::string, uint64_t> filled;
    std::unique_ptr<SharedMemory> shm;
    bool have_version = false, saw_last = false;
    uint64_t want_tensors = 0, want_bytes = 0;
    proto::WeightChunk chunk;
    while (reader->Read(&chunk)) {
      if (saw_last) return invalid("chunk after the last one");
      if (!have_version) {
        version.version = chunk.weight_version();
        have_version = true;
      } else if (chunk.weight_version() != version.version) {
        return invalid("tensor '" + chunk.name() + "': weight_version " +
                       std::to_string(chunk.weight_version()) + " inside a push of version " +
                       std::to_string(version.version));
      }
      ++version.chunks;
      if (chunk.name().empty() && !chunk.last()) return invalid("chunk without a tensor name");
      if (!chunk.name().empty()) {
        if (auto s = add_chunk(chunk, version, index, filled, shm); !s.ok()) return s;
      }
      if (chunk.last()) {
        saw_last = true;
        want_tensors = chunk.version_tensors();
        want_bytes = chunk.version_bytes();
      }
    }
    if (!saw_last) {
      return invalid("stream ended before the last chunk of version " +
                     std::to_string(version.version) + " (truncated push)");
    }
    for (const auto& t : version.tensors) {
      if (filled[t.name] != t.bytes.size()) {
        return invalid("tensor '" + t.name + "': received " + std::to_string(filled[t.name]) +
                       " of " + std::to_string(t.bytes.size()) + " bytes");
      }
    }
    if (version.tensors.size() != want_tensors || version.bytes != want_bytes) {
      return invalid("version " + std::to_string(version.version) + " announced " +
                     std::to_string(want_tensors) + " tensors / " + std::to_string(want_bytes) +
                     " bytes, received " + std::to_string(version.tensors.size()) + " / " +
                     std::to_string(version.bytes));
    }
    std::lock_guard<std::mutex> lock(apply_mutex_);
    if (applied_ > 0 && version.version <= applied_) {
      return {grpc::StatusCode::FAILED_PRECONDITION,
              "WeightTransfer.Push: version " + std::to_string(version.version) +
                  " is not newer than the held version " + std::to_string(applied_.load())};
    }
    version.via_shared_memory = shm != nullptr;
    uint64_t v = version.version, chunks = version.chunks, bytes = version.bytes,
             tensors = version.tensors.size();
    try {
      apply_(version);
    } catch (const std::exception& e) {
      return {grpc::StatusCode::FAILED_PRECONDITION,
              "WeightTransfer.Push: version " + std::to_string(v) + " not applied: " + e.what()};
    }
    applied_ = v;
    ack->set_chunks(chunks);
    ack->set_bytes(bytes);
    ack->set_tensors(tensors);
    ack->set_weight_version(v);
    return grpc::Status::OK;
  }

  grpc::Status add_chunk(const proto::WeightChunk& chunk, WeightVersion& version,
                         std::unordered_map<std::string, size_t>& index,
                         std::unordered_map<std::string, uint64_t>& filled,
                         std::unique_ptr<SharedMemory>& shm) {
    const std::string& name = chunk.name();
    size_t element = dtype_element_size(chunk.dtype());
    if (element == 0)
      return invalid("tensor '" + name + "': unknown dtype '" + chunk.dtype() + "'");
    uint64_t nbytes = 0;
    if (!shape_bytes(chunk.shape(), element, &nbytes) || nbytes != chunk.total_bytes()) {
      return invalid("tensor '" + name + "': total_bytes " + std::to_string(chunk.total_bytes()) +
                     " does not match dtype " + chunk.dtype() + " and its shape");
    }
    auto it = index.find(name);
    if (it == index.end()) {
      if (version.bytes + nbytes > options_.max_version_bytes) {
        return {grpc::StatusCode::RESOURCE_EXHAUSTED,
                "WeightTransfer.Push: version exceeds the limit of " +
                    std::to_string(options_.max_version_bytes) + " bytes at tensor '" + name + "'"};
      }
      ReceivedTensor t;
      t.name = name;
      t.dtype = chunk.dtype();
      t.shape.assign(chunk.shape().begin(), chunk.shape().end());
      {
        std::lock_guard<std::mutex> lock(spare_mutex_);
        auto spare = spare_.find(name);
        if (spare != spare_.end() && spare->second.size() == nbytes) {
          t.bytes = std::move(spare->second);
          spare_.erase(spare);
        }
      }
      if (t.bytes.size() != nbytes) t.bytes.resize(nbytes);
      version.bytes += nbytes;
      it = index.emplace(name, version.tensors.size()).first;
      version.tensors.push_back(std::move(t));
    }
    ReceivedTensor& t = version.tensors[it->second];
    if (t.dtype != chunk.dtype() || t.bytes.size() != nbytes ||
        !std::equal(t.shape.begin(), t.shape.end(), chunk.shape().begin(), chunk.shape().end())) {
      return invalid("tensor '" + name + "': dtype or shape differs between its chunks");
    }
    uint64_t& done = filled[name];
    if (!chunk.shm_name().empty()) {
      // The whole tensor lives in the shared-memory object at byte_offset.
      if (done != 0) return invalid("tensor '" + name + "': sent twice");
      if (!shm || shm->name() != chunk.shm_name()) {
        try {
          shm = std::make_unique<SharedMemory>(SharedMemory::open(chunk.shm_name()));
        } catch (const std::exception& e) {
          return invalid(e.what());
        }
      }
      if (chunk.byte_offset() > shm->size() || nbytes > shm->size() - chunk.byte_offset()) {
        return invalid("tensor '" + name + "': range outside shared memory " + shm->name());
      }
      const uint8_t* src = shm->data() + chunk.byte_offset();
      // Copy out and checksum what was copied in one pass; a mismatch leaves only the
      // staging buffer touched (the version is not applied).
      if (crc32c_copy(t.bytes.data(), src, nbytes) != chunk.crc32c()) {
        return {grpc::StatusCode::DATA_LOSS,
                "WeightTransfer.Push: tensor '" + name + "': CRC-32C mismatch in shared memory"};
      }
      t.crc32c = chunk.crc32c();
      done = nbytes;
      return grpc::Status::OK;
    }
    const std::string& data = chunk.data();
    if (chunk.byte_offset() != done) {
      return invalid("tensor '" + name + "': chunk at byte " + std::to_string(chunk.byte_offset()) +
                     ", expected " + std::to_string(done) + " (chunks of a tensor come in order)");
    }
    if (data.size() > nbytes - done) {
      return invalid("tensor '" + name + "': chunk runs past total_bytes " +
                     std::to_string(nbytes));
    }
    // Copy into the tensor and checksum the copy in one pass (a bad chunk fails the push;
    // the half-written staging buffer is never applied).
    const uint32_t crc = crc32c_copy(t.bytes.data() + done, data.data(), data.size());
    if (crc != chunk.crc32c()) {
      return {grpc::StatusCode::DATA_LOSS, "WeightTransfer.Push: tensor '" + name +
                                               "': CRC-32C mismatch in the chunk at byte " +
                                               std::to_string(done)};
    }
    t.crc32c = crc32c_combine(t.crc32c, crc, data.size());  // no second pass over the data
    done += data.size();
    return grpc::Status::OK;
  }

  std::string token_;
  WeightReceiver::Options options_;
  std::function<void(const WeightVersion&)> apply_;
  std::mutex apply_mutex_;
  std::atomic<uint64_t> applied_{0};
  std::mutex spare_mutex_;
  std::unordered_map<std::string, std::vector<uint8_t>> spare_;  // the last version's buffers
};

}  // namespace

struct WeightReceiver::Impl {
  WeightService service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  Impl(std::string token, Options options, std::function<void(const WeightVersion&)> apply)
      : service(std::move(token), options, std::move(apply)) {
    server = start_server(options.host, options.port, &service, &port, options.max_message_bytes);
  }
};

WeightReceiver::WeightReceiver(std::string token, Options options,
                               std::function<void(const WeightVersion&)> apply)
    : impl_(std::make_unique<Impl>(std::move(token), std::move(options), std::move(apply))) {}

WeightReceiver::~WeightReceiver() {
  impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
}

int WeightReceiver::port() const { return impl_->port; }
uint64_t WeightReceiver::version() const { return impl_->service.applied(); }

struct WeightPusher::Impl {
  std::string target, token;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<SharedMemory> shm;  // reused while the version size stays the same
};

WeightPusher::WeightPusher(std::string target, std::string token)
    : impl_(std::make_unique<Impl>()) {
  impl_->target = std::move(target);
  impl_->token = std::move(token);
  impl_->channel = make_channel(impl_->target);
}

WeightPusher::~WeightPusher() = default;

WeightPushResult push_weights(const std::string& target, const std::string& token, uint64_t version,
                              const std::vector<TensorView>& tensors,
                              const WeightPushOptions& options) {
  WeightPusher pusher(target, token);
  return pusher.push(version, tensors, options);
}

WeightPushResult WeightPusher::push(uint64_t version, const std::vector<TensorView>& tensors,
                                    const WeightPushOptions& options) {
  const std::string& target = impl_->target;
  if (options.chunk_bytes == 0) fail("push_weights: chunk_bytes must be > 0");
  grpc::ClientContext context;
  prepare_call(context, impl_->token, options.deadline_ms);
  proto::WeightAck ack;

  uint64_t total = 0;
  for (const auto& t : tensors) total += t.bytes;
  SharedMemory* shm = nullptr;
  std::vector<uint64_t> offsets;
  std::vector<uint32_t> crcs;  // of each tensor, taken while copying it into the segment
  if (options.shared_memory) {
    if (!impl_->shm || impl_->shm->size() != total) {
      impl_->shm.reset();
      impl_->shm = std::make_unique<SharedMemory>(SharedMemory::create(total));
    }
    shm = impl_->shm.get();
    uint64_t at = 0;
    for (const auto& t : tensors) {
      offsets.push_back(at);
      crcs.push_back(crc32c_copy(shm->data() + at, t.data, t.bytes));
      at += t.bytes;
    }
  }
  // WeightTransfer.Push with messages we frame ourselves: each chunk is the serialised
  // header fields followed by field 8 (`data`) whose bytes are a slice pointing into the
  // caller's tensor (gRPC's STATIC_SLICE: no copy; the tensor outlives the call). Protobuf
  // accepts fields in any order, so the receiver parses an ordinary WeightChunk.
  grpc::internal::RpcMethod method("/anvil.proto.WeightTransfer/Push",
                                   grpc::internal::RpcMethod::CLIENT_STREAMING, impl_->channel);
  std::unique_ptr<grpc::ClientWriter<grpc::ByteBuffer>> writer(
      grpc::internal::ClientWriterFactory<grpc::ByteBuffer>::Create(impl_->channel.get(), method,
                                                                    &context, &ack));

  WeightPushResult result;
  result.version = version;
  bool broken = false;
  proto::WeightChunk chunk;
  std::string header;
  const uint8_t* payload = nullptr;  // data bytes sent by reference after the header
  size_t payload_bytes = 0;
  auto send = [&](bool last) {
    if (last) {
      chunk.set_last(true);
      chunk.set_version_tensors(tensors.size());
      chunk.set_version_bytes(total);
    }
    ++result.chunks;
    header.clear();
    chunk.AppendToString(&header);
    grpc::ByteBuffer message;
    if (payload != nullptr) {
      // Tag of field 8, wire type 2 (length-delimited), then the varint length.
      header.push_back(static_cast<char>((8 << 3) | 2));
      for (uint64_t v = payload_bytes;; v >>= 7) {
        if (v < 0x80) {
          header.push_back(static_cast<char>(v));
          break;
        }
        header.push_back(static_cast<char>((v & 0x7F) | 0x80));
      }
      grpc::Slice parts[2] = {grpc::Slice(header),
                              grpc::Slice(payload, payload_bytes, grpc::Slice::STATIC_SLICE)};
      message = grpc::ByteBuffer(parts, 2);
    } else {
      grpc::Slice part(header);
      message = grpc::ByteBuffer(&part, 1);
    }
    if (!writer->Write(message)) broken = true;
  };
  for (size_t i = 0; i < tensors.size() && !broken; ++i) {
    const TensorView& t = tensors[i];
    chunk.Clear();
    chunk.set_name(t.name);
    chunk.set_dtype(t.dtype);
    for (int64_t d : t.shape) chunk.add_shape(d);
    chunk.set_total_bytes(t.bytes);
    chunk.set_weight_version(version);
    bool last_tensor = i + 1 == tensors.size();
    if (shm) {
      chunk.set_shm_name(shm->name());
      chunk.set_byte_offset(offsets[i]);
      chunk.set_crc32c(crcs[i]);
      send(last_tensor);
      continue;
    }
    size_t at = 0;
    do {
      size_t n = std::min(options.chunk_bytes, t.bytes - at);
      chunk.set_byte_offset(at);
      chunk.set_crc32c(crc32c(t.data + at, n));
      payload = t.data + at;
      payload_bytes = n;
      at += n;
      send(last_tensor && at == t.bytes);
    } while (at < t.bytes && !broken);
    payload = nullptr;
  }
  if (tensors.empty()) {
    chunk.Clear();
    chunk.set_weight_version(version);
    send(true);
  }
  writer->WritesDone();
  grpc::Status status = writer->Finish();
  if (!status.ok()) fail("weight push of version {} to {}: {}", version, target, describe(status));
  if (ack.weight_version() != version) {
    fail("weight push to {}: receiver acknowledged version {} instead of {}", target,
         ack.weight_version(), version);
  }
  result.bytes = ack.bytes();
  result.tensors = ack.tensors();
  return result;
}

// ---- rollouts --------------------------------------------------------------------------

namespace {

grpc::Status bad_sample(size_t index, const std::string& what) {
  return {grpc::StatusCode::INVALID_ARGUMENT,
          "RolloutTransfer.Push: sample " + std::to_string(index) + ": " + what};
}

grpc::Status validate(const proto::Sample& s, size_t index) {
  int64_t n = s.tokens_size();
  int64_t r = s.response_length();
  if (n == 0) return bad_sample(index, "tokens is empty");
  if (r < 1 || r >= n) {
    return bad_sample(
        index, "response_length " + std::to_string(r) + " not in [1, " + std::to_string(n) + ")");
  }
  auto per_token = [&](int size, const char* field) -> grpc::Status {
    if (size != 0 && size != r) {
      return bad_sample(index, std::string(field) + " has " + std::to_string(size) +
                                   " values, response_length is " + std::to_string(r));
    }
    return grpc::Status::OK;
  };
  if (auto st = per_token(s.loss_mask_size(), "loss_mask"); !st.ok()) return st;
  if (auto st = per_token(s.rollout_logprobs_size(), "rollout_logprobs"); !st.ok()) return st;
  if (auto st = per_token(s.ref_logprobs_size(), "ref_logprobs"); !st.ok()) return st;
  for (int64_t t : s.tokens()) {
    if (t < 0) return bad_sample(index, "negative token id " + std::to_string(t));
  }
  for (float lp : s.rollout_logprobs()) {
    if (!(lp <= 0.0f) || std::isinf(lp))
      return bad_sample(index, "rollout_logprobs not finite <= 0");
  }
  for (float lp : s.ref_logprobs()) {
    if (!(lp <= 0.0f) || std::isinf(lp)) return bad_sample(index, "ref_logprobs not finite <= 0");
  }
  if (!std::isfinite(s.reward())) return bad_sample(index, "reward is not finite");
  return grpc::Status::OK;
}

WireSample from_proto(const proto::Sample& s) {
  WireSample w;
  w.tokens.assign(s.tokens().begin(), s.tokens().end());
  w.response_length = s.response_length();
  w.loss_mask.assign(s.loss_mask().begin(), s.loss_mask().end());
  w.reward = s.reward();
  w.rollout_logprobs.assign(s.rollout_logprobs().begin(), s.rollout_logprobs().end());
  w.ref_logprobs.assign(s.ref_logprobs().begin(), s.ref_logprobs().end());
  w.weight_version = s.weight_version();
  w.group_id = s.group_id();
  w.status = s.status();
  w.metadata_json = s.metadata_json();
  return w;
}

void to_proto(const WireSample& w, int64_t index, proto::Sample* s) {
  for (int64_t t : w.tokens) s->add_tokens(t);
  s->set_response_length(static_cast<uint32_t>(w.response_length));
  for (float m : w.loss_mask) s->add_loss_mask(m);
  s->set_reward(w.reward);
  for (float lp : w.rollout_logprobs) s->add_rollout_logprobs(lp);
  for (float lp : w.ref_logprobs) s->add_ref_logprobs(lp);
  s->set_weight_version(w.weight_version);
  s->set_group_id(w.group_id);
  s->set_status(static_cast<proto::Sample::Status>(w.status));
  s->set_metadata_json(w.metadata_json);
  s->set_index(index);
}

class RolloutService final : public proto::RolloutTransfer::Service {
 public:
  RolloutService(std::string token, RolloutReceiver::Options options)
      : token_(std::move(token)), options_(std::move(options)) {}

  grpc::Status Push(grpc::ServerContext* context, grpc::ServerReader<proto::RolloutBatch>* reader,
                    proto::RolloutAck* ack) override {
    if (auto s = check_token(*context, token_, "RolloutTransfer.Push"); !s.ok()) return s;
    Rollout rollout;
    proto::RolloutBatch part;
    uint32_t next_part = 0;
    bool saw_last = false;
    uint64_t bytes = 0, tokens = 0;
    while (reader->Read(&part)) {
      if (saw_last)
        return {grpc::StatusCode::INVALID_ARGUMENT, "RolloutTransfer.Push: part after the last"};
      if (next_part == 0) rollout.rollout_id = part.rollout_id();
      if (part.part() != next_part || part.rollout_id() != rollout.rollout_id) {
        return {grpc::StatusCode::INVALID_ARGUMENT,
                "RolloutTransfer.Push: rollout " + std::to_string(part.rollout_id()) + " part " +
                    std::to_string(part.part()) + " out of order (expected rollout " +
                    std::to_string(rollout.rollout_id) + " part " + std::to_string(next_part) +
                    ")"};
      }
      ++next_part;
      bytes += part.ByteSizeLong();
      if (bytes > options_.max_rollout_bytes) {
        return {grpc::StatusCode::RESOURCE_EXHAUSTED,
                "RolloutTransfer.Push: rollout exceeds " +
                    std::to_string(options_.max_rollout_bytes) + " bytes"};
      }
      for (const auto& s : part.samples()) {
        if (auto st = validate(s, rollout.samples.size()); !st.ok()) return st;
        tokens += s.tokens_size();
        rollout.samples.push_back(from_proto(s));
      }
      if (part.last()) {
        saw_last = true;
        if (part.total_samples() != rollout.samples.size()) {
          return {grpc::StatusCode::INVALID_ARGUMENT,
                  "RolloutTransfer.Push: rollout " + std::to_string(rollout.rollout_id) +
                      " announced " + std::to_string(part.total_samples()) + " samples, received " +
                      std::to_string(rollout.samples.size())};
        }
      }
    }
    if (!saw_last) {
      return {grpc::StatusCode::INVALID_ARGUMENT,
              "RolloutTransfer.Push: stream ended before the last part (truncated rollout)"};
    }
    ack->set_rollout_id(rollout.rollout_id);
    ack->set_samples(rollout.samples.size());
    ack->set_tokens(tokens);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (ready_.count(rollout.rollout_id) != 0) {
        return {grpc::StatusCode::ALREADY_EXISTS, "RolloutTransfer.Push: rollout " +
                                                      std::to_string(rollout.rollout_id) +
                                                      " was already received"};
      }
      ready_.emplace(rollout.rollout_id, std::move(rollout));
    }
    cv_.notify_all();
    return grpc::Status::OK;
  }

  Rollout take(uint64_t id, int64_t timeout_ms) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                      [&] { return ready_.count(id) != 0 || cancelled_; })) {
      fail("rollout {} did not arrive within {} ms", id, timeout_ms);
    }
    if (cancelled_) fail("waiting for rollout {}: {}", id, cancel_reason_);
    Rollout r = std::move(ready_.at(id));
    ready_.erase(id);
    return r;
  }

 private:
  std::string token_;
  RolloutReceiver::Options options_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::map<uint64_t, Rollout> ready_;
  bool cancelled_ = false;
  std::string cancel_reason_;

 public:
  void cancel(const std::string& reason) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      cancelled_ = true;
      cancel_reason_ = reason;
    }
    cv_.notify_all();
  }
};

}  // namespace

struct RolloutReceiver::Impl {
  RolloutService service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  Impl(std::string token, Options options) : service(std::move(token), options) {
    server = start_server(options.host, options.port, &service, &port, options.max_message_bytes);
  }
};

RolloutReceiver::RolloutReceiver(std::string token, Options options)
    : impl_(std::make_unique<Impl>(std::move(token), std::move(options))) {}

RolloutReceiver::~RolloutReceiver() {
  impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
}

int RolloutReceiver::port() const { return impl_->port; }

Rollout RolloutReceiver::take(uint64_t rollout_id, int64_t timeout_ms) {
  return impl_->service.take(rollout_id, timeout_ms);
}

void RolloutReceiver::cancel(const std::string& reason) { impl_->service.cancel(reason); }

RolloutPushResult push_rollout(const std::string& target, const std::string& token,
                               const Rollout& rollout, int64_t deadline_ms, size_t part_bytes) {
  auto stub = proto::RolloutTransfer::NewStub(make_channel(target));
  grpc::ClientContext context;
  prepare_call(context, token, deadline_ms);
  proto::RolloutAck ack;
  auto writer = stub->Push(&context, &ack);
  proto::RolloutBatch part;
  uint32_t index = 0;
  bool broken = false;
  auto flush = [&](bool last) {
    part.set_rollout_id(rollout.rollout_id);
    part.set_part(index++);
    if (last) {
      part.set_last(true);
      part.set_total_samples(rollout.samples.size());
    }
    if (!writer->Write(part)) broken = true;
    part.Clear();
  };
  for (size_t i = 0; i < rollout.samples.size() && !broken; ++i) {
    to_proto(rollout.samples[i], static_cast<int64_t>(i), part.add_samples());
    bool last = i + 1 == rollout.samples.size();
    if (last || part.ByteSizeLong() >= part_bytes) flush(last);
  }
  if (rollout.samples.empty()) flush(true);
  writer->WritesDone();
  grpc::Status status = writer->Finish();
  if (!status.ok()) {
    fail("rollout {} push to {}: {}", rollout.rollout_id, target, describe(status));
  }
  return {ack.samples(), ack.tokens()};
}

}  // namespace anvil::runtime
