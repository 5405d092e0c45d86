// A program with one site for every mutation rule. mutation_tool_test builds
// its schema once and each mutant alone, and requires the two to behave the
// same for every mutant: the schema must switch exactly one mutant on.
#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>

namespace absl {
class Status {
 public:
  Status() = default;
  explicit Status(std::string m) : message_(std::move(m)) {}
  bool ok() const { return message_.empty(); }
  const std::string& message() const { return message_; }

 private:
  std::string message_;
};
inline Status OkStatus() { return Status(); }
inline Status InvalidArgumentError(const char* m) { return Status(m); }
}  // namespace absl

#define GPUALLOC_RETURN_IF_ERROR(expr) \
  do {                                 \
    absl::Status s_ = (expr);          \
    if (!s_.ok()) return s_;           \
  } while (0)

std::optional<std::size_t> CheckedAdd(std::size_t a, std::size_t b) {
  return a + b < a ? std::nullopt : std::optional<std::size_t>(a + b);
}

std::mutex mu;
int counter = 0;
void Bump() { ++counter; }

absl::Status Validate(int n) {
  if (n < 0 || n > 100) return absl::InvalidArgumentError("out of range");
  return absl::OkStatus();
}

absl::Status Twice(int n) {
  GPUALLOC_RETURN_IF_ERROR(Validate(n));
  std::lock_guard<std::mutex> lock(mu);
  Bump();
  return absl::OkStatus();
}

// Stand-ins for allocator/common/mutex.h: its annotated scoped lock.
namespace gpualloc {
class Mutex {
 public:
  void lock() { held_ = true; }
  void unlock() { held_ = false; }
  bool held() const { return held_; }

 private:
  bool held_ = false;
};
class MutexLock {
 public:
  explicit MutexLock(Mutex& mu) : mu_(mu) { mu_.lock(); }
  ~MutexLock() { mu_.unlock(); }

 private:
  Mutex& mu_;
};
}  // namespace gpualloc

gpualloc::Mutex state_mu;
bool HeldWhileUpdating() {
  gpualloc::MutexLock lock(state_mu);
  return state_mu.held();
}

std::size_t Span(std::size_t begin, std::size_t end) { return std::min(end - begin, std::size_t{8}); }

std::string Guarded(bool fail) {
  try {
    if (fail) throw std::runtime_error("boom");
    return "fine";
  } catch (const std::exception& e) {
    return std::string("caught ") + e.what();
  }
}

int main() {
  std::size_t total = 0;
  for (int n : {-1, 0, 100, 101}) {
    absl::Status st = Twice(n);
    std::printf("Twice(%d): %s\n", n, st.ok() ? "ok" : st.message().c_str());
  }
  total += Span(2, 5);
  total += Span(0, 20);
  std::optional<std::size_t> sum = CheckedAdd(~std::size_t{0}, 2);
  std::printf("sum %s\n", sum ? "has value" : "overflow");
  std::printf("counter %d total %zu\n", counter, total);
  std::printf("held while updating: %d\n", HeldWhileUpdating());
  try {
    std::printf("%s\n", Guarded(true).c_str());
  } catch (...) {
    std::printf("escaped\n");
  }
  return 0;
}
