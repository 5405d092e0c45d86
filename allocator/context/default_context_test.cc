// The process-wide default context, configured and first used from many
// threads at once: exactly one configuration wins or none is taken after the
// first use, every thread sees the one instance, and (under TSan) the
// configuration is never read while another thread writes it. Its own binary:
// the default context lives for the whole process.
#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "allocator/backend/sim/sim_backend.h"
#include "allocator/context/context.h"
#include "gtest/gtest.h"

namespace gpualloc {
namespace {

TEST(DefaultContext, ConcurrentConfigurationAndFirstUseAgree) {
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(1, 64 << 20));
  std::atomic<bool> go{false};
  std::atomic<int> configured{0}, refused{0}, other{0};
  std::vector<Context*> seen(4, nullptr);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      while (!go.load()) {
      }
      for (int i = 0; i < 50; ++i) {
        const absl::Status st = ConfigureDefaultContext(ContextOptions::SimOnly(sim));
        if (st.ok()) {
          ++configured;
        } else if (st.code() == absl::StatusCode::kFailedPrecondition) {
          ++refused;
        } else {
          ++other;
        }
      }
    });
  }
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      while (!go.load()) {
      }
      seen[t] = &DefaultContext();
    });
  }
  go = true;
  for (auto& th : threads) th.join();
  EXPECT_EQ(other.load(), 0);
  EXPECT_EQ(configured.load() + refused.load(), 200);
  for (Context* c : seen) EXPECT_EQ(c, seen[0]);
  EXPECT_EQ(ConfigureDefaultContext(ContextOptions::SimOnly(sim)).code(),
            absl::StatusCode::kFailedPrecondition)
      << "configured after the first use";
}

}  // namespace
}  // namespace gpualloc
