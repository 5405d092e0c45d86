// Drives libgpualloc_torch.so as PyTorch's CUDAPluggableAllocator does:
// dlopen, dlsym, then calls through the C symbols with a device and the
// caller's current stream, null (the default stream) or not, freeing on the
// stream the block was allocated on. On the sim (GPUALLOC_BACKEND=sim), whose
// streams stand in for the ones PyTorch would have created.
#include <dlfcn.h>
#include <unistd.h>

#include <atomic>
#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace {

struct TorchAbi {
  void* (*malloc_fn)(size_t, int, void*);
  void (*free_fn)(void*, size_t, int, void*);
  int (*empty_cache)();
  long long (*allocated)(int);
  long long (*reserved)(int);
  long long (*errors)();
  size_t (*last_error)(char*, size_t);
  int (*stats)(int, long long*, int);
};

TorchAbi Load() {
  std::string path = "allocator/adapters/libgpualloc_torch.so";
  if (const char* srcdir = std::getenv("TEST_SRCDIR")) {
    path = std::string(srcdir) + "/" + std::getenv("TEST_WORKSPACE") + "/" + path;
  }
  void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  EXPECT_NE(lib, nullptr) << dlerror();
  TorchAbi abi{};
  if (lib == nullptr) return abi;
  abi.malloc_fn = reinterpret_cast<decltype(abi.malloc_fn)>(dlsym(lib, "gpualloc_torch_malloc"));
  abi.free_fn = reinterpret_cast<decltype(abi.free_fn)>(dlsym(lib, "gpualloc_torch_free"));
  abi.empty_cache = reinterpret_cast<decltype(abi.empty_cache)>(dlsym(lib, "gpualloc_torch_empty_cache"));
  abi.allocated = reinterpret_cast<decltype(abi.allocated)>(dlsym(lib, "gpualloc_torch_allocated_bytes"));
  abi.reserved = reinterpret_cast<decltype(abi.reserved)>(dlsym(lib, "gpualloc_torch_reserved_bytes"));
  abi.errors = reinterpret_cast<decltype(abi.errors)>(dlsym(lib, "gpualloc_torch_error_count"));
  abi.last_error = reinterpret_cast<decltype(abi.last_error)>(dlsym(lib, "gpualloc_torch_last_error"));
  abi.stats = reinterpret_cast<decltype(abi.stats)>(dlsym(lib, "gpualloc_torch_stats"));
  return abi;
}

TEST(TorchPluggableAllocator, LoadsWithDlopenAndServesAllocationsThroughItsCSymbols) {
  const TorchAbi abi = Load();
  ASSERT_NE(abi.malloc_fn, nullptr);
  ASSERT_NE(abi.free_fn, nullptr);
  ASSERT_NE(abi.last_error, nullptr);
  std::vector<std::pair<void*, size_t>> live;
  std::set<void*> distinct;
  for (int device : {0, 1}) {
    for (size_t size : {size_t{1}, size_t{4096}, size_t{3} << 20, size_t{100000}}) {
      void* p = abi.malloc_fn(size, device, nullptr);
      ASSERT_NE(p, nullptr) << "device " << device << " size " << size;
      EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % 256, 0u);
      distinct.insert(p);
      live.emplace_back(p, size);
    }
  }
  EXPECT_EQ(distinct.size(), live.size());
  EXPECT_GT(abi.allocated(0), 0);
  EXPECT_GT(abi.allocated(1), 0);
  for (size_t i = 0; i < live.size(); ++i) abi.free_fn(live[i].first, live[i].second, i < 4 ? 0 : 1, nullptr);
  EXPECT_EQ(abi.allocated(0), 0);
  EXPECT_EQ(abi.allocated(1), 0);
  EXPECT_EQ(abi.errors(), 0);
  // Bad input cannot return a Status here: counted, described, no crash.
  abi.free_fn(live[0].first, live[0].second, 0, nullptr);  // double free
  EXPECT_EQ(abi.errors(), 1);
  EXPECT_EQ(abi.malloc_fn(1 << 20, 9, nullptr), nullptr) << "no such device";
  EXPECT_EQ(abi.errors(), 2);
  char message[256];
  abi.last_error(message, sizeof message);
  EXPECT_NE(std::string(message).find("device"), std::string::npos) << message;
  ASSERT_EQ(abi.empty_cache(), 0);
  EXPECT_EQ(abi.reserved(0), 0);
  EXPECT_EQ(abi.reserved(1), 0);
}

TEST(TorchPluggableAllocator, ServesTheCallersStreamsAndReusesAcrossThem) {
  const TorchAbi abi = Load();
  ASSERT_NE(abi.malloc_fn, nullptr);
  const long long errors_before = abi.errors();
  // Two streams the caller made (opaque handles, as cudaStream_t are).
  void* const side = reinterpret_cast<void*>(std::uintptr_t{0x5100});
  void* const copy = reinterpret_cast<void*>(std::uintptr_t{0x5200});
  for (int round = 0; round < 4; ++round) {
    for (void* stream : {side, copy, static_cast<void*>(nullptr)}) {
      void* p = abi.malloc_fn(size_t{3} << 20, 0, stream);
      ASSERT_NE(p, nullptr) << "round " << round;
      abi.free_fn(p, size_t{3} << 20, 0, stream);  // freed on its allocation stream
    }
  }
  // A block freed on one stream is reused by another (the allocator orders
  // the new stream after the old one's work on the device).
  void* a = abi.malloc_fn(size_t{1} << 20, 1, side);
  ASSERT_NE(a, nullptr);
  abi.free_fn(a, size_t{1} << 20, 1, side);
  std::vector<long long> before(11), after(11);
  ASSERT_EQ(abi.stats(1, before.data(), 11), 11);
  void* b = abi.malloc_fn(size_t{1} << 20, 1, copy);
  ASSERT_NE(b, nullptr);
  ASSERT_EQ(abi.stats(1, after.data(), 11), 11);
  EXPECT_EQ(b, a) << "the block freed on `side` is reused";
  EXPECT_EQ(after[9], before[9] + 1) << "by another stream: each handle is a stream of its own";
  abi.free_fn(b, size_t{1} << 20, 1, copy);
  EXPECT_EQ(abi.errors(), errors_before) << "no call failed";
  EXPECT_EQ(abi.allocated(0), 0);
  EXPECT_EQ(abi.allocated(1), 0);
  ASSERT_EQ(abi.empty_cache(), 0);
}

// PyTorch calls in from many threads, each on streams of its own: on the
// sim, the first sight of each handle adds it to one table of streams, which
// must be taken under its lock (a dropped lock there survived the mutation
// run: no test had threads meet in it).
TEST(TorchPluggableAllocator, ThreadsOnStreamsOfTheirOwnMeetInOneStreamTable) {
  const TorchAbi abi = Load();
  ASSERT_NE(abi.malloc_fn, nullptr);
  const long long errors_before = abi.errors();
  constexpr int kThreads = 4, kStreamsEach = 24;
  std::atomic<int> failures{0};
  std::barrier each_new_stream(kThreads);  // first sights at the same moment
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kStreamsEach; ++i) {
        each_new_stream.arrive_and_wait();
        void* stream = reinterpret_cast<void*>(std::uintptr_t{0x70000} + 0x100 * (t * 64 + i));
        for (int round = 0; round < 2; ++round) {  // first sight, then found again
          void* p = abi.malloc_fn(4096, t % 2, stream);
          if (p == nullptr) {
            ++failures;
            continue;
          }
          abi.free_fn(p, 4096, t % 2, stream);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(abi.errors(), errors_before);
  EXPECT_EQ(abi.allocated(0), 0);
  EXPECT_EQ(abi.allocated(1), 0);
  ASSERT_EQ(abi.empty_cache(), 0);
}

// The C calls that fill caller buffers write no more than they are given.
TEST(TorchPluggableAllocator, MessagesAndCountersAreTruncatedToTheCallersBuffer) {
  const TorchAbi abi = Load();
  ASSERT_NE(abi.stats, nullptr);
  EXPECT_EQ(abi.malloc_fn(1 << 20, 9, nullptr), nullptr) << "no such device: an error to read";
  const size_t full = abi.last_error(nullptr, 0);
  ASSERT_GT(full, 8u);
  EXPECT_EQ(abi.last_error(nullptr, 64), full) << "no buffer: the length is all it returns";
  char big[512];
  ASSERT_EQ(abi.last_error(big, sizeof big), full);
  char small[8];
  std::memset(small, 'x', sizeof small);
  EXPECT_EQ(abi.last_error(small, sizeof small), 7u);
  EXPECT_EQ(std::string(small), std::string(big, 7)) << "NUL-terminated, truncated";
  char none[1] = {'x'};
  EXPECT_EQ(abi.last_error(none, 0), full);
  EXPECT_EQ(none[0], 'x') << "a zero length writes nothing";

  void* p = abi.malloc_fn(4096, 0, nullptr);
  ASSERT_NE(p, nullptr);
  const int n = abi.stats(0, nullptr, 0);
  ASSERT_EQ(n, 11);
  EXPECT_EQ(abi.stats(0, nullptr, 5), n) << "no buffer: only the count";
  std::vector<long long> all(n + 2, -7);
  ASSERT_EQ(abi.stats(0, all.data(), n + 2), n);
  EXPECT_GE(all[0], 4096) << "allocated current";
  EXPECT_EQ(all[n], -7) << "nothing written past the counters";
  std::vector<long long> three(5, -7);
  ASSERT_EQ(abi.stats(0, three.data(), 3), n);
  EXPECT_EQ(three[0], all[0]);
  EXPECT_EQ(three[2], all[2]);
  EXPECT_EQ(three[3], -7) << "nothing written past the capacity";
  EXPECT_EQ(abi.stats(9, all.data(), n), -1) << "no such device";
  abi.free_fn(p, 4096, 0, nullptr);
}

// A failed free cannot return its error to PyTorch: it is said on stderr,
// naming the call, as well as counted.
TEST(TorchPluggableAllocator, AFailedFreeIsReportedOnStderrNamingTheCall) {
  const TorchAbi abi = Load();
  ASSERT_NE(abi.free_fn, nullptr);
  char path[] = "/tmp/gpualloc_torch_stderr_XXXXXX";
  const int capture = mkstemp(path);
  ASSERT_GE(capture, 0);
  std::fflush(stderr);
  const int saved = dup(2);
  dup2(capture, 2);
  int local = 0;
  abi.free_fn(&local, 64, 0, nullptr);  // not the allocator's
  std::fflush(stderr);
  dup2(saved, 2);
  close(saved);
  std::string said(4096, '\0');
  said.resize(static_cast<std::size_t>(pread(capture, said.data(), said.size(), 0)));
  close(capture);
  unlink(path);
  EXPECT_NE(said.find("gpualloc_torch_free"), std::string::npos) << said;
}

}  // namespace
