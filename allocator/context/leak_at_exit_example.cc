// Allocates through a context that tracks allocations and exits without
// freeing one of them: the leak report at exit must say so.
#include <memory>

#include "allocator/adapters/default_allocation.h"
#include "allocator/backend/sim/sim_backend.h"
#include "allocator/policy/allocation_tag.h"

int main() {
  using namespace gpualloc;
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(1, 64 << 20));
  ContextOptions options = ContextOptions::SimOnly(sim);
  options.leak_report_at_exit = true;
  static Context* ctx = new Context(std::move(options));  // lives until exit, like the default
  Allocation kept = Allocate(4096, *ctx).value();
  (void)kept;
  {
    ScopedAllocationTag tag("forgotten-cache");
    Allocation leaked = Allocate(3 << 20, *ctx).value();
    (void)leaked;
  }
  if (!Deallocate(kept, *ctx).ok()) return 1;
  return 0;
}
