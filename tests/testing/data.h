// Test data shared by the engine and CSI tests: reproducible pseudo-random
// blocks, and reading back what landed in a backing file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace ublk_test {

// n pseudo-random bytes; the same seed gives the same bytes.
std::string Pattern(size_t n, unsigned seed);

// len bytes of the file at `path` from offset `off`. Shorter (empty if the
// file cannot be opened) when the file does not hold them, so a comparison
// with the expected bytes fails.
std::string ReadFileRange(const std::string& path, uint64_t off, size_t len);

}  // namespace ublk_test
