// The one place with C++ in rlhf: a plain C ABI over PyTorch's own c10d (TCPStore and the Gloo
// process group), compiled against the libtorch headers torch-sys uses and linked against the
// same libtorch_cpu. Every function catches C++ exceptions and returns them as an error string
// (malloc'd; freed by rlhf_c10d_free_string), so no exception crosses into Rust.
//
// Tensors arrive as tch's `C_tensor*`, which is an `at::Tensor*` (torch-sys's `typedef
// torch::Tensor *tensor`).
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "bridge.h"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

using rlhf_c10d::dup_message;
using rlhf_c10d::Group;
using rlhf_c10d::guarded;
using rlhf_c10d::Store;

namespace {

void wait(const c10::intrusive_ptr<c10d::Work>& work, int64_t timeout_ms) {
  work->wait(std::chrono::milliseconds(timeout_ms));
}

c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case 0:
      return c10d::ReduceOp(c10d::ReduceOp::SUM);
    case 1:
      return c10d::ReduceOp(c10d::ReduceOp::MAX);
    case 2:
      return c10d::ReduceOp(c10d::ReduceOp::MIN);
    default:
      throw std::invalid_argument("unknown reduce op " + std::to_string(op));
  }
}

}  // namespace

extern "C" {

void rlhf_c10d_free_string(char* s) { std::free(s); }

// A TCPStore client (or server, on the rank that hosts it) under `prefix`.
int rlhf_c10d_store_new(const char* host, uint16_t port, int is_server, int world_size, int64_t timeout_ms, const char* prefix,
                        void** out, char** err) {
  return guarded(err, [&] {
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_server != 0;
    opts.numWorkers = std::nullopt;
    opts.waitWorkers = false;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    opts.multiTenant = true;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    *out = new Store{prefixed};
  });
}

void rlhf_c10d_store_free(void* store) { delete static_cast<Store*>(store); }

int rlhf_c10d_store_set(void* store, const char* key, const uint8_t* value, size_t len, char** err) {
  return guarded(err, [&] {
    std::vector<uint8_t> v(value, value + len);
    static_cast<Store*>(store)->store->set(std::string(key), v);
  });
}

// Blocks until `key` exists (or the store's timeout passes); the value is malloc'd.
int rlhf_c10d_store_get(void* store, const char* key, uint8_t** value, size_t* len, char** err) {
  return guarded(err, [&] {
    auto v = static_cast<Store*>(store)->store->get(std::string(key));
    *len = v.size();
    *value = static_cast<uint8_t*>(std::malloc(v.size() + 1));
    std::memcpy(*value, v.data(), v.size());
  });
}

int rlhf_c10d_store_check(void* store, const char* key, int* exists, char** err) {
  return guarded(err, [&] { *exists = static_cast<Store*>(store)->store->check({std::string(key)}) ? 1 : 0; });
}

void rlhf_c10d_free_bytes(uint8_t* v) { std::free(v); }

// A Gloo process group over `store` (its own prefix inside it), with `timeout_ms` for every
// collective.
int rlhf_c10d_gloo_new(void* store, const char* prefix, int rank, int size, int64_t timeout_ms, void** out, char** err) {
  return guarded(err, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    auto opts = c10d::ProcessGroupGloo::Options::create_default(timeout);
    auto pg_store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), static_cast<Store*>(store)->store);
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(pg_store, rank, size, opts);
    *out = new Group{pg, rank, size};
  });
}

void rlhf_c10d_group_free(void* group) { delete static_cast<Group*>(group); }

int rlhf_c10d_all_reduce(void* group, const void* tensor, int op, int64_t timeout_ms, char** err) {
  return guarded(err, [&] {
    auto* g = static_cast<Group*>(group);
    std::vector<at::Tensor> ts{*static_cast<const at::Tensor*>(tensor)};
    c10d::AllreduceOptions opts;
    opts.reduceOp = reduce_op(op);
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    wait(g->pg->allreduce(ts, opts), timeout_ms);
  });
}

int rlhf_c10d_broadcast(void* group, const void* tensor, int root, int64_t timeout_ms, char** err) {
  return guarded(err, [&] {
    auto* g = static_cast<Group*>(group);
    std::vector<at::Tensor> ts{*static_cast<const at::Tensor*>(tensor)};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    wait(g->pg->broadcast(ts, opts), timeout_ms);
  });
}

// `outputs` holds `size` tensors (rank i's input lands in outputs[i]).
int rlhf_c10d_all_gather(void* group, const void* const* outputs, const void* input, int64_t timeout_ms, char** err) {
  return guarded(err, [&] {
    auto* g = static_cast<Group*>(group);
    std::vector<std::vector<at::Tensor>> outs(1);
    for (int i = 0; i < g->size; ++i) outs[0].push_back(*static_cast<const at::Tensor*>(outputs[i]));
    std::vector<at::Tensor> ins{*static_cast<const at::Tensor*>(input)};
    c10d::AllgatherOptions opts;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    wait(g->pg->allgather(outs, ins, opts), timeout_ms);
  });
}

// `inputs` holds `size` tensors (the sum over ranks of inputs[i] lands in rank i's output).
int rlhf_c10d_reduce_scatter(void* group, const void* output, const void* const* inputs, int64_t timeout_ms, char** err) {
  return guarded(err, [&] {
    auto* g = static_cast<Group*>(group);
    std::vector<at::Tensor> outs{*static_cast<const at::Tensor*>(output)};
    std::vector<std::vector<at::Tensor>> ins(1);
    for (int i = 0; i < g->size; ++i) ins[0].push_back(*static_cast<const at::Tensor*>(inputs[i]));
    c10d::ReduceScatterOptions opts;
    opts.reduceOp = reduce_op(0);
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    wait(g->pg->reduce_scatter(outs, ins, opts), timeout_ms);
  });
}

int rlhf_c10d_barrier(void* group, int64_t timeout_ms, char** err) {
  return guarded(err, [&] {
    auto* g = static_cast<Group*>(group);
    c10d::BarrierOptions opts;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    wait(g->pg->barrier(opts), timeout_ms);
  });
}

}  // extern "C"
