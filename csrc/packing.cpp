// Prefix-shared packing layout (spiral_fast._native.pack_layout): the same PackedBatch fields as the
// Python reference spiral_fast/packing/reference.py, built with a radix tree whose edges point into
// the input arrays, so the work is O(total tokens) with no per-token node allocation.
//
// Node order must reproduce the reference exactly: children in first-insertion order, segments
// numbered in DFS pre-order, a segment split wherever a sequence branches off or ends.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

// Above this many children a node also keeps a hash index (root fan-out can be in the thousands).
constexpr size_t kHashFanout = 8;

struct Node {
  const int64_t* src = nullptr;  // first token of this node's edge, inside the caller's array
  int64_t len = 0;  // edge length (tokens in this segment)
  std::vector<int32_t> children;  // insertion order = DFS order
  std::unique_ptr<std::unordered_map<int64_t, int32_t>> index;  // first token -> child, when large
};

class RadixTree {
 public:
  RadixTree() { nodes_.emplace_back(); }  // 0 = root

  // Inserts tokens [begin, end) and returns the node where this sequence ends. Without sharing
  // every sequence becomes its own root segment (plain varlen packing).
  int32_t insert(const int64_t* begin, const int64_t* end, bool share) {
    if (!share) return add_child(0, begin, end - begin);
    int32_t node = 0;
    const int64_t* at = begin;
    while (at < end) {
      const int32_t child = find_child(node, *at);
      if (child < 0) return add_child(node, at, end - at);
      // walk the edge while tokens agree
      const Node& c = nodes_[child];
      const int64_t n = std::min(c.len, end - at);
      int64_t k = 1;  // first token already matched by the lookup
      while (k < n && c.src[k] == at[k]) ++k;
      at += k;
      if (k == c.len) {
        node = child;
        continue;
      }
      // diverged or ended inside the edge: split it, the upper part ends here
      const int32_t upper = split(node, child, k);
      if (at == end) return upper;
      return add_child(upper, at, end - at);
    }
    return node;
  }

  std::vector<Node>& nodes() { return nodes_; }

 private:
  int32_t find_child(int32_t node, int64_t token) const {
    const Node& n = nodes_[node];
    if (n.index) {
      auto it = n.index->find(token);
      return it == n.index->end() ? -1 : it->second;
    }
    for (int32_t c : n.children)
      if (*nodes_[c].src == token) return c;
    return -1;
  }

  void index_child(int32_t node, int32_t child) {
    Node& n = nodes_[node];
    if (!n.index && n.children.size() > kHashFanout) {
      n.index = std::make_unique<std::unordered_map<int64_t, int32_t>>();
      for (int32_t c : n.children) n.index->emplace(*nodes_[c].src, c);
    } else if (n.index) {
      (*n.index)[*nodes_[child].src] = child;
    }
  }

  int32_t add_child(int32_t parent, const int64_t* src, int64_t len) {
    const int32_t id = new_node(src, len);
    nodes_[parent].children.push_back(id);
    index_child(parent, id);
    return id;
  }

  // Splits the edge of `child` (under `parent`) after k tokens. The lower part keeps the id of
  // `child` (its children and the sequences ending at it stay valid); a new node takes the upper
  // part and the child's place among its parent's children, so the order is kept.
  int32_t split(int32_t parent, int32_t child, int64_t k) {
    const int32_t upper = new_node(nodes_[child].src, k);
    nodes_[child].src += k;
    nodes_[child].len -= k;
    nodes_[upper].children.push_back(child);
    Node& p = nodes_[parent];
    for (int32_t& c : p.children)
      if (c == child) {
        c = upper;
        break;
      }
    if (p.index) (*p.index)[*nodes_[upper].src] = upper;  // same first token
    return upper;
  }

  int32_t new_node(const int64_t* src, int64_t len) {
    if (nodes_.size() >= static_cast<size_t>(INT32_MAX)) throw std::length_error("too many segments");
    nodes_.emplace_back();
    nodes_.back().src = src;
    nodes_.back().len = len;
    return static_cast<int32_t>(nodes_.size() - 1);
  }

  std::vector<Node> nodes_;
};

using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

template <typename T>
py::array_t<T> empty(int64_t n) {
  return py::array_t<T>(static_cast<py::ssize_t>(n));
}

// sequences: list of S 1-D int64 arrays (each non-empty; validated by the caller) ->
// (input_ids [T], position_ids [T], cu_seqlens [G+1] int32, segment_parent [G], seq_segment [S],
//  hidden_index [R], target [R], seq [R], pos [R]): the fields of PackedBatch, all int64 unless noted.
// One pass writes every output in place: at the scale (tens of millions of tokens) the
// cost is memory traffic, so nothing is materialised twice.
py::tuple pack_layout(const py::list& sequences, bool share) {
  const int64_t num_seqs = static_cast<int64_t>(sequences.size());
  std::vector<I64Array> arrays;  // keeps the inputs alive while edges point into them
  std::vector<const int64_t*> data(num_seqs);
  std::vector<int64_t> len(num_seqs), row_start(num_seqs + 1, 0);
  arrays.reserve(num_seqs);
  for (int64_t s = 0; s < num_seqs; ++s) {
    arrays.push_back(I64Array::ensure(sequences[s]));
    if (!arrays.back() || arrays.back().ndim() != 1 || arrays.back().size() == 0)
      throw std::invalid_argument("sequences[" + std::to_string(s) + "] must be a non-empty 1-D int64 array");
    data[s] = arrays.back().data();
    len[s] = arrays.back().size();
    row_start[s + 1] = row_start[s] + len[s] - 1;
  }

  RadixTree tree;
  std::vector<int32_t> end_node(num_seqs);
  std::vector<int64_t> cu{0}, parent_seg, depth;  // depth: position of each segment's first token
  std::vector<int32_t> order;                     // segment -> node
  std::vector<int64_t> segment_of;
  {
    py::gil_scoped_release release;
    for (int64_t s = 0; s < num_seqs; ++s) end_node[s] = tree.insert(data[s], data[s] + len[s], share);
    // DFS pre-order over segments; explicit stack: chains can be as deep as a sequence is long
    const std::vector<Node>& nodes = tree.nodes();
    segment_of.assign(nodes.size(), -1);
    order.reserve(nodes.size());
    parent_seg.reserve(nodes.size());
    depth.reserve(nodes.size());
    cu.reserve(nodes.size() + 1);
    struct Item { int32_t node; int64_t parent, depth; };
    std::vector<Item> stack;
    for (auto it = nodes[0].children.rbegin(); it != nodes[0].children.rend(); ++it) stack.push_back({*it, -1, 0});
    while (!stack.empty()) {
      const Item item = stack.back();
      stack.pop_back();
      const int64_t seg = static_cast<int64_t>(order.size());
      const Node& n = nodes[item.node];
      order.push_back(item.node);
      parent_seg.push_back(item.parent);
      depth.push_back(item.depth);
      segment_of[item.node] = seg;
      cu.push_back(cu.back() + n.len);
      for (auto it = n.children.rbegin(); it != n.children.rend(); ++it)
        stack.push_back({*it, seg, item.depth + n.len});
    }
  }
  const int64_t num_tokens = cu.back(), num_segs = static_cast<int64_t>(order.size()), rows = row_start[num_seqs];
  if (num_tokens > INT32_MAX) throw std::length_error("more than 2^31-1 packed tokens: cu_seqlens is int32");
  auto input_ids = empty<int64_t>(num_tokens), position_ids = empty<int64_t>(num_tokens);
  auto cu_seqlens = empty<int32_t>(num_segs + 1);
  auto segment_parent = empty<int64_t>(num_segs);
  auto seq_segment = empty<int64_t>(num_seqs);
  auto hidden_index = empty<int64_t>(rows), target = empty<int64_t>(rows), seq = empty<int64_t>(rows),
       pos = empty<int64_t>(rows);
  {
    int64_t *ids = input_ids.mutable_data(), *posn = position_ids.mutable_data();
    int32_t* cu32 = cu_seqlens.mutable_data();
    int64_t *par = segment_parent.mutable_data(), *last = seq_segment.mutable_data();
    int64_t *hid = hidden_index.mutable_data(), *tgt = target.mutable_data(), *sq = seq.mutable_data(),
            *ps = pos.mutable_data();
    py::gil_scoped_release release;
    const std::vector<Node>& nodes = tree.nodes();
    for (int64_t s = 0; s < num_seqs; ++s) last[s] = segment_of[end_node[s]];
    auto fill_segments = [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; ++g) {
        const Node& n = nodes[order[g]];
        cu32[g] = static_cast<int32_t>(cu[g]);
        par[g] = parent_seg[g];
        std::copy(n.src, n.src + n.len, ids + cu[g]);
        std::iota(posn + cu[g], posn + cu[g + 1], depth[g]);
      }
    };
    // prediction rows: sequence s's tokens are the whole segments on its root path
    auto fill_rows = [&](int64_t s0, int64_t s1) {
      std::vector<int64_t> path;
      for (int64_t s = s0; s < s1; ++s) {
        path.clear();
        for (int64_t g = last[s]; g != -1; g = parent_seg[g]) path.push_back(g);
        const int64_t r0 = row_start[s], n = len[s];
        int64_t p = 0;  // token p predicts token p + 1: rows hold the packed index of tokens 0..n-2
        for (auto it = path.rbegin(); it != path.rend() && p < n - 1; ++it)
          for (int64_t t = cu[*it]; t < cu[*it + 1] && p < n - 1; ++t, ++p) hid[r0 + p] = t;
        std::copy(data[s] + 1, data[s] + n, tgt + r0);
        std::fill(sq + r0, sq + r0 + n - 1, s);
        std::iota(ps + r0, ps + r0 + n - 1, int64_t{1});
      }
    };
    // the fill is bound by memory traffic (and first-touch page faults) over ~6 arrays of tens of
    // millions of int64: split it over threads by token count
    const int64_t work = num_tokens + rows;
    const int64_t workers = work < (int64_t{1} << 16) ? 1 : std::clamp<int64_t>(std::thread::hardware_concurrency(), 1, 8);
    std::vector<std::thread> pool;
    for (int64_t w = 0; w < workers; ++w) {
      // chunk w covers segments / sequences whose start lies in [w, w+1) / workers of the total
      auto bound = [&](const std::vector<int64_t>& starts, int64_t total, int64_t k) {
        if (k == workers) return static_cast<int64_t>(starts.size()) - 1;  // trailing empty items too
        return static_cast<int64_t>(std::lower_bound(starts.begin(), starts.end() - 1, total * k / workers) -
                                    starts.begin());
      };
      const int64_t g0 = bound(cu, num_tokens, w), g1 = bound(cu, num_tokens, w + 1);
      const int64_t s0 = bound(row_start, rows, w), s1 = bound(row_start, rows, w + 1);
      auto job = [&, g0, g1, s0, s1] {
        fill_segments(g0, g1);
        fill_rows(s0, s1);
      };
      if (w + 1 == workers) job(); else pool.emplace_back(job);
    }
    for (auto& t : pool) t.join();
    cu32[num_segs] = static_cast<int32_t>(num_tokens);
  }
  return py::make_tuple(input_ids, position_ids, cu_seqlens, segment_parent, seq_segment, hidden_index, target, seq,
                        pos);
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "spiral_fast host-side layout builders (C++)";
  m.def("pack_layout", &pack_layout, py::arg("sequences"), py::arg("share"),
        "PackedBatch fields (input_ids, position_ids, cu_seqlens, segment_parent, seq_segment, hidden_index, "
        "target, seq, pos) for a list of 1-D int64 arrays; share=False gives one root segment per sequence.");
}
