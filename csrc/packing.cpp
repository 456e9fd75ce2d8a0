// Prefix-shared packing layout (spiral_fast._native.trie_layout): the same layout as the Python
// reference spiral_fast/packing/reference.py, built with a radix tree whose edges point into the
// input tokens, so the work is O(total tokens) with no per-token node allocation.
//
// Node order must reproduce the reference exactly: children in first-insertion order, segments
// numbered in DFS pre-order, a segment split wherever a sequence branches off or ends.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <unordered_map>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

// Above this many children a node also keeps a hash index (root fan-out can be in the thousands).
constexpr size_t kHashFanout = 8;

struct Node {
  int64_t src = 0;  // offset in the flat input of the first token of this node's edge
  int64_t len = 0;  // edge length (tokens in this segment)
  std::vector<int32_t> children;  // insertion order = DFS order
  std::unique_ptr<std::unordered_map<int64_t, int32_t>> index;  // first token -> child, when large
};

class RadixTree {
 public:
  explicit RadixTree(const int64_t* tokens) : tok_(tokens) { nodes_.emplace_back(); }  // 0 = root

  // Inserts tokens [begin, end) and returns the node where this sequence ends.
  int32_t insert(int64_t begin, int64_t end) {
    int32_t node = 0;
    int64_t at = begin;
    while (at < end) {
      const int32_t child = find_child(node, tok_[at]);
      if (child < 0) return add_child(node, at, end - at);
      // walk the edge while tokens agree
      const Node& c = nodes_[child];
      const int64_t n = std::min(c.len, end - at);
      int64_t k = 1;  // first token already matched by the lookup
      while (k < n && tok_[c.src + k] == tok_[at + k]) ++k;
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
      if (tok_[nodes_[c].src] == token) return c;
    return -1;
  }

  void index_child(int32_t node, int32_t child) {
    Node& n = nodes_[node];
    if (!n.index && n.children.size() > kHashFanout) {
      n.index = std::make_unique<std::unordered_map<int64_t, int32_t>>();
      for (int32_t c : n.children) n.index->emplace(tok_[nodes_[c].src], c);
    } else if (n.index) {
      (*n.index)[tok_[nodes_[child].src]] = child;
    }
  }

  int32_t add_child(int32_t parent, int64_t src, int64_t len) {
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
    if (p.index) (*p.index)[tok_[nodes_[upper].src]] = upper;  // same first token
    return upper;
  }

  int32_t new_node(int64_t src, int64_t len) {
    if (nodes_.size() >= static_cast<size_t>(INT32_MAX)) throw std::length_error("too many segments");
    nodes_.emplace_back();
    nodes_.back().src = src;
    nodes_.back().len = len;
    return static_cast<int32_t>(nodes_.size() - 1);
  }

  const int64_t* tok_;
  std::vector<Node> nodes_;
};

template <typename T>
py::array_t<T> to_array(std::vector<T>&& v) {
  auto* heap = new std::vector<T>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>({static_cast<py::ssize_t>(heap->size())}, {sizeof(T)}, heap->data(), owner);
}

// flat_tokens [N] int64, offsets [S+1] int64 ->
// (token_index [N], cu_seqlens [G+1], segment_parent [G], seq_segment [S]), all int64.
py::tuple trie_layout(py::array_t<int64_t, py::array::c_style | py::array::forcecast> flat_tokens,
                      py::array_t<int64_t, py::array::c_style | py::array::forcecast> offsets) {
  if (flat_tokens.ndim() != 1 || offsets.ndim() != 1 || offsets.size() < 1)
    throw std::invalid_argument("flat_tokens and offsets must be 1-D, offsets non-empty");
  const int64_t* tok = flat_tokens.data();
  const int64_t* off = offsets.data();
  const int64_t num_seqs = offsets.size() - 1;
  const int64_t num_in = flat_tokens.size();
  for (int64_t s = 0; s < num_seqs; ++s)
    if (off[s] >= off[s + 1] || off[s] < 0 || off[s + 1] > num_in)
      throw std::invalid_argument("offsets must be strictly increasing within flat_tokens");

  std::vector<int64_t> token_index(num_in), cu_seqlens{0}, segment_parent, seq_segment(num_seqs);
  std::vector<int32_t> end_node(num_seqs);
  {
    py::gil_scoped_release release;
    RadixTree tree(tok);
    for (int64_t s = 0; s < num_seqs; ++s) end_node[s] = tree.insert(off[s], off[s + 1]);

    // DFS pre-order over segments; explicit stack: chains can be as deep as a sequence is long
    std::vector<Node>& nodes = tree.nodes();
    std::vector<int64_t> segment_of(nodes.size(), -1), start_of(nodes.size(), 0);
    std::vector<std::pair<int32_t, int64_t>> stack;  // (node, parent segment)
    for (auto it = nodes[0].children.rbegin(); it != nodes[0].children.rend(); ++it) stack.emplace_back(*it, -1);
    segment_parent.reserve(nodes.size());
    cu_seqlens.reserve(nodes.size() + 1);
    while (!stack.empty()) {
      const auto [node, parent] = stack.back();
      stack.pop_back();
      const int64_t seg = static_cast<int64_t>(segment_parent.size());
      segment_parent.push_back(parent);
      segment_of[node] = seg;
      start_of[node] = cu_seqlens.back();
      cu_seqlens.push_back(cu_seqlens.back() + nodes[node].len);
      const auto& ch = nodes[node].children;
      for (auto it = ch.rbegin(); it != ch.rend(); ++it) stack.emplace_back(*it, seg);
    }

    // each sequence's tokens: the segments on its root path, found from the end upwards
    std::vector<int64_t> path;
    for (int64_t s = 0; s < num_seqs; ++s) {
      const int64_t last = segment_of[end_node[s]];
      seq_segment[s] = last;
      path.clear();
      for (int64_t g = last; g != -1; g = segment_parent[g]) path.push_back(g);
      int64_t out = off[s];
      for (auto it = path.rbegin(); it != path.rend(); ++it)
        for (int64_t t = cu_seqlens[*it]; t < cu_seqlens[*it + 1]; ++t) token_index[out++] = t;
    }
  }
  return py::make_tuple(to_array(std::move(token_index)), to_array(std::move(cu_seqlens)),
                        to_array(std::move(segment_parent)), to_array(std::move(seq_segment)));
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "spiral_fast host-side layout builders (C++)";
  m.def("trie_layout", &trie_layout, py::arg("flat_tokens"), py::arg("offsets"),
        "Prefix-shared packing layout: (token_index [N], cu_seqlens [G+1], segment_parent [G], "
        "seq_segment [S]) for sequences concatenated in flat_tokens [N] with bounds offsets [S+1].");
}
