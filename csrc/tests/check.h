// A tiny test harness: the build has no network for gtest, and these tests need only equality
// checks. TEST(name) registers a function; CHECK_EQ records a failure and keeps going so one run
// shows every mismatch; main() returns nonzero if any check failed (what ctest looks at).
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

namespace darex_test {

struct Registry {
  std::vector<std::pair<const char*, std::function<void()>>> tests;
  int failures = 0;
  static Registry& get() {
    static Registry r;
    return r;
  }
};

struct Register {
  Register(const char* name, std::function<void()> fn) {
    Registry::get().tests.emplace_back(name, std::move(fn));
  }
};

// Integers print in hex (Philox words are easier to compare that way), floats with full precision.
template <typename T>
std::string show(T v) {
  char buf[64];
  if constexpr (std::is_same_v<T, std::string>) {
    return v;
  } else if constexpr (std::is_floating_point_v<T>) {
    std::snprintf(buf, sizeof buf, "%.17g", static_cast<double>(v));
  } else if constexpr (std::is_same_v<T, bool>) {
    return v ? "true" : "false";
  } else {
    std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  }
  return buf;
}

template <typename A, typename B>
bool check_eq(const A& a, const B& b, const char* ea, const char* eb, const char* file, int line) {
  if (a == b) return true;
  ++Registry::get().failures;
  std::printf("  %s:%d: CHECK_EQ(%s, %s) failed: %s != %s\n", file, line, ea, eb, show(a).c_str(),
              show(b).c_str());
  return false;
}

inline int run_all() {
  Registry& r = Registry::get();
  for (auto& [name, fn] : r.tests) {
    const int before = r.failures;
    fn();
    std::printf("[%s] %s\n", r.failures == before ? "  OK  " : "FAILED", name);
  }
  std::printf("%zu tests, %d failed checks\n", r.tests.size(), r.failures);
  return r.failures == 0 ? 0 : 1;
}

}  // namespace darex_test

#define DAREX_TEST_CAT2(a, b) a##b
#define DAREX_TEST_CAT(a, b) DAREX_TEST_CAT2(a, b)
#define TEST(name)                                                                     \
  static void name();                                                                  \
  static darex_test::Register DAREX_TEST_CAT(register_, name)(#name, name);            \
  static void name()
// Evaluates to whether the check passed, so a loop can stop after its first mismatch.
#define CHECK_EQ(a, b) darex_test::check_eq((a), (b), #a, #b, __FILE__, __LINE__)
#define CHECK(cond) CHECK_EQ(static_cast<bool>(cond), true)
