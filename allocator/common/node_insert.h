// Two-phase insertion into a node-based standard map (std::map,
// std::unordered_map, or their std::pmr forms), for code that makes an
// irreversible change (a device allocation) between "can the bookkeeping
// fail?" and "the bookkeeping is done":
//
//   auto node = PrepareInsert(live_, ptr, Placement{});  // may throw; live_ unchanged
//   ... the irreversible part; fill node.key() / node.mapped() if not known yet ...
//   CommitInsert(live_, std::move(node));                // no-throw
//
// Why not Abseil's flat tables: they set their new capacity before they
// allocate it, so an insert or reserve whose allocation throws leaves them
// corrupt. Node-based standard maps give the strong guarantee instead, and a
// node made in advance makes the insert itself allocation-free.
//
// Between PrepareInsert and CommitInsert no other insert may happen on the
// same map (the callers hold the map's lock throughout), or the room
// reserved in an unordered map's bucket array may be used up.
#ifndef GPUALLOC_ALLOCATOR_COMMON_NODE_INSERT_H_
#define GPUALLOC_ALLOCATOR_COMMON_NODE_INSERT_H_

#include <algorithm>
#include <utility>

namespace gpualloc {

// Room in an unordered map's bucket array for one more element, so the next
// insert cannot rehash (and so cannot allocate or throw). Grows ahead of
// need, geometrically, with a slot to spare: an insert below a load of one
// never rehashes. May throw; the map is unchanged if it does. A no-op for
// ordered maps.
template <typename Map>
void ReserveOneMore(Map& map) {
  if constexpr (requires { map.bucket_count(); }) {
    const auto want = map.size() + 2;
    if (static_cast<double>(want) >
        static_cast<double>(map.bucket_count()) * map.max_load_factor()) {
      map.reserve(std::max(want, 2 * map.size()));
    }
  }
}

// A node for `container` (a map or a set) holding the element made from
// `args`, made with the container's allocator. Touches only the allocator,
// not the container. May throw.
template <typename Container, typename... Args>
typename Container::node_type MakeNode(const Container& container, Args&&... args) {
  Container scratch(container.get_allocator());
  return scratch.extract(scratch.emplace(std::forward<Args>(args)...).first);
}

// A node for `map` holding (key, value), made with the map's allocator, and
// room in the map to link it. May throw; `map` is unchanged if it does.
template <typename Map, typename K, typename V>
typename Map::node_type PrepareInsert(Map& map, K&& key, V&& value) {
  typename Map::node_type node = MakeNode(map, std::forward<K>(key), std::forward<V>(value));
  ReserveOneMore(map);
  return node;
}

// Links a node from PrepareInsert (its key must not be in `map`). No-throw:
// the node exists and, for an unordered map, so does the room.
template <typename Map>
void CommitInsert(Map& map, typename Map::node_type&& node) noexcept {
  map.insert(std::move(node));
}

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_COMMON_NODE_INSERT_H_
