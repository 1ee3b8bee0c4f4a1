// Where each role runs: slime's placement group, without Ray.
//
// Every registered node offers `devices` bundles (one per GPU, or per declared CPU device
// slot). Bundles are sorted by (hostname, node id, device index), as slime sorts its
// placement-group bundles by node IP and GPU id, and handed out in order:
//   train ranks   bundles [0, actor_num_nodes * actor_num_gpus_per_node), rank r on bundle r
//   rollout       engines of rollout_num_gpus_per_engine consecutive bundles, starting after
//                 the train bundles, or at bundle 0 with --colocate (sharing the devices)
//   ref           on train rank 0's bundle (it shares the device, as slime's ref model does)
//   weight-sync   on train rank 0's node, no device
// An engine's bundles must sit on one node. Not enough bundles, or zero-sized groups, are
// errors naming the flag and the numbers.
#pragma once

#include <string>
#include <vector>

namespace anvil::runtime {

struct NodeResources {
  std::string node_id;  // unique per worker: "hostname/pid"
  std::string hostname;
  int devices = 0;  // bundles it offers
};

struct PlacementRequest {
  int actor_num_nodes = 1;
  int actor_num_gpus_per_node = 1;
  int rollout_num_gpus = 1;
  int rollout_num_gpus_per_engine = 1;
  bool colocate = false;
  bool use_ref = false;
};

struct RolePlacement {
  std::string role;  // train | ref | rollout | weight-sync
  int rank = 0;      // train rank, engine index; 0 for ref and weight-sync
  std::string node_id;
  std::vector<int> devices;  // device indices on that node
};

// Throws anvil::Error when the nodes cannot hold the request.
std::vector<RolePlacement> place_roles(const std::vector<NodeResources>& nodes,
                                       const PlacementRequest& request);

}  // namespace anvil::runtime
