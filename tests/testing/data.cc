#include "tests/testing/data.h"

#include <fcntl.h>
#include <unistd.h>

#include <random>

namespace ublk_test {

std::string Pattern(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

std::string ReadFileRange(const std::string& path, uint64_t off, size_t len) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  std::string s(len, '\0');
  ssize_t n = pread(fd, s.data(), len, static_cast<off_t>(off));
  close(fd);
  s.resize(n < 0 ? 0 : static_cast<size_t>(n));
  return s;
}

}  // namespace ublk_test
