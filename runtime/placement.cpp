#include "runtime/placement.hpp"

#include "backends/common/error.hpp"

#include <algorithm>
#include <tuple>

namespace anvil::runtime {

std::vector<RolePlacement> place_roles(const std::vector<NodeResources>& nodes,
                                       const PlacementRequest& r) {
  if (r.actor_num_nodes < 1) fail("--actor-num-nodes must be >= 1, got {}", r.actor_num_nodes);
  if (r.actor_num_gpus_per_node < 1) {
    fail("--actor-num-gpus-per-node must be >= 1, got {}", r.actor_num_gpus_per_node);
  }
  if (r.rollout_num_gpus < 1) fail("--rollout-num-gpus must be >= 1, got {}", r.rollout_num_gpus);
  if (r.rollout_num_gpus_per_engine < 1 ||
      r.rollout_num_gpus % r.rollout_num_gpus_per_engine != 0) {
    fail("--rollout-num-gpus {} is not a multiple of --rollout-num-gpus-per-engine {}",
         r.rollout_num_gpus, r.rollout_num_gpus_per_engine);
  }
  struct Bundle {
    std::string hostname, node_id;
    int device;
  };
  std::vector<Bundle> bundles;
  for (const auto& n : nodes) {
    for (int d = 0; d < n.devices; ++d) bundles.push_back({n.hostname, n.node_id, d});
  }
  std::sort(bundles.begin(), bundles.end(), [](const Bundle& a, const Bundle& b) {
    return std::tie(a.hostname, a.node_id, a.device) < std::tie(b.hostname, b.node_id, b.device);
  });
  int train = r.actor_num_nodes * r.actor_num_gpus_per_node;
  int needed = r.colocate ? std::max(train, r.rollout_num_gpus) : train + r.rollout_num_gpus;
  if (static_cast<int>(bundles.size()) < needed) {
    fail(
        "placement needs {} device bundles ({} train = --actor-num-nodes {} x "
        "--actor-num-gpus-per-node {}, {} rollout = --rollout-num-gpus{}), the {} registered "
        "nodes offer {}",
        needed, train, r.actor_num_nodes, r.actor_num_gpus_per_node, r.rollout_num_gpus,
        r.colocate ? ", colocated" : "", nodes.size(), bundles.size());
  }
  std::vector<RolePlacement> out;
  for (int rank = 0; rank < train; ++rank) {
    out.push_back({"train", rank, bundles[rank].node_id, {bundles[rank].device}});
  }
  if (r.use_ref) out.push_back({"ref", 0, bundles[0].node_id, {bundles[0].device}});
  int first = r.colocate ? 0 : train;
  int engines = r.rollout_num_gpus / r.rollout_num_gpus_per_engine;
  for (int e = 0; e < engines; ++e) {
    RolePlacement p{"rollout", e, "", {}};
    for (int k = 0; k < r.rollout_num_gpus_per_engine; ++k) {
      const Bundle& b = bundles[first + e * r.rollout_num_gpus_per_engine + k];
      if (k == 0) p.node_id = b.node_id;
      if (b.node_id != p.node_id) {
        fail(
            "rollout engine {} would span nodes {} and {}: --rollout-num-gpus-per-engine {} "
            "must fit on one node",
            e, p.node_id, b.node_id, r.rollout_num_gpus_per_engine);
      }
      p.devices.push_back(b.device);
    }
    out.push_back(std::move(p));
  }
  out.push_back({"weight-sync", 0, bundles[0].node_id, {}});
  return out;
}

}  // namespace anvil::runtime
