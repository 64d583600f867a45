// Which sanitizer a test binary is built with, for tests that replace
// allocation or lock symbols the sanitizers own.
//   UBLK_TEST_SANITIZED   1 under ASan or TSan (gcc or clang)
//   UBLK_TEST_CLANG_TSAN  1 under clang's TSan, whose runtime is a static
//                         archive defining operator new itself (its shared
//                         runtime crashes at start on this host): a second
//                         definition there does not link
#pragma once

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define UBLK_TEST_SANITIZED 1
#endif
// clang (14) does not define __SANITIZE_ADDRESS__: ask it the clang way.
#if defined(__clang__) && defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define UBLK_TEST_SANITIZED 1
#endif
#if __has_feature(thread_sanitizer)
#define UBLK_TEST_CLANG_TSAN 1
#endif
#endif
#ifndef UBLK_TEST_SANITIZED
#define UBLK_TEST_SANITIZED 0
#endif
#ifndef UBLK_TEST_CLANG_TSAN
#define UBLK_TEST_CLANG_TSAN 0
#endif
