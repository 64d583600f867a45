// Replaces every form of the global operator new and delete with ones that
// go through a hook the test defines:
//
//   void* TestOperatorNew(std::size_t n, std::size_t align) noexcept;
//
// (align 0 for the unaligned forms) returns the memory, or nullptr to fail
// the allocation (the throwing forms then throw std::bad_alloc). The hook
// may use ublk_test::AllocateForNew. Include in exactly one translation unit
// of a test binary, and not under clang's TSan (tests/testing/sanitizers.h).
#pragma once

#include <stdlib.h>

#include <cstddef>
#include <cstdlib>
#include <new>

void* TestOperatorNew(std::size_t n, std::size_t align) noexcept;

namespace ublk_test {
// What operator new would return: malloc, or posix_memalign above the
// fundamental alignment; nullptr when there is no memory.
inline void* AllocateForNew(std::size_t n, std::size_t align) noexcept {
  if (n == 0) n = 1;
  if (align <= alignof(std::max_align_t)) return std::malloc(n);
  void* p = nullptr;
  return ::posix_memalign(&p, align, n) == 0 ? p : nullptr;
}

inline void* OperatorNewOrThrow(std::size_t n, std::size_t align) {
  void* p = TestOperatorNew(n, align);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
}  // namespace ublk_test

void* operator new(std::size_t n) { return ublk_test::OperatorNewOrThrow(n, 0); }
void* operator new[](std::size_t n) { return ublk_test::OperatorNewOrThrow(n, 0); }
void* operator new(std::size_t n, std::align_val_t a) {
  return ublk_test::OperatorNewOrThrow(n, static_cast<std::size_t>(a));
}
void* operator new[](std::size_t n, std::align_val_t a) {
  return ublk_test::OperatorNewOrThrow(n, static_cast<std::size_t>(a));
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return TestOperatorNew(n, 0); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  return TestOperatorNew(n, 0);
}
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return TestOperatorNew(n, static_cast<std::size_t>(a));
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return TestOperatorNew(n, static_cast<std::size_t>(a));
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
