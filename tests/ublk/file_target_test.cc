// FileTarget bad inputs and its I/O through a real io_uring.
#include "ublk/file_target.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ublk/null_target.h"

namespace ublk {
namespace {

using ::testing::HasSubstr;

class FileTargetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "/file_target_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void MakeFile(const std::string& name, size_t size, mode_t mode = 0600) {
    std::string p = dir_ + "/" + name;
    int fd = open(p.c_str(), O_CREAT | O_RDWR, mode);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(ftruncate(fd, static_cast<off_t>(size)), 0);
    close(fd);
    chmod(p.c_str(), mode);
  }
  // Runs one op to completion on a private ring.
  int32_t Run(Target& t, const TargetIo& io) {
    auto ring = std::move(Ring::Create(8)).value();
    for (;;) {
      auto now = t.StartIo(*ring, io, 42);
      if (now.has_value()) return *now;
      EXPECT_TRUE(ring->SubmitAndWait(absl::Seconds(5)).ok());
      int32_t res = 0;
      int n = ring->DrainCompletions([&](const io_uring_cqe& c) {
        EXPECT_EQ(c.user_data, 42u);
        res = c.res;
      });
      EXPECT_EQ(n, 1);
      auto done = t.FinishIo(io, res);
      if (done.has_value()) return *done;
    }
  }
  std::string dir_;
};

TEST_F(FileTargetTest, BadInputsAreClearErrors) {
  auto missing = FileTarget::Open({dir_ + "/nope", 1 << 20, false, true});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("missing"));

  MakeFile("small", 4096);
  auto small = FileTarget::Open({dir_ + "/small", 1 << 20, false, true});
  EXPECT_EQ(small.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(small.status().message()), HasSubstr("smaller than the volume"));

  MakeFile("ro", 1 << 20, 0444);
  auto ro = FileTarget::Open({dir_ + "/ro", 1 << 20, false, true});
  EXPECT_EQ(ro.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(ro.status().message()), HasSubstr("read-only"));

  auto dir = FileTarget::Open({dir_, 1 << 20, false, true});
  EXPECT_FALSE(dir.ok());
  EXPECT_THAT(std::string(dir.status().message()), HasSubstr(dir_));

  EXPECT_EQ(FileTarget::Open({dir_ + "/x", 0, true, true}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FileTarget::Open({dir_ + "/x", 1000, true, true}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FileTarget::Open({"", 4096, true, true}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(FileTargetTest, CreateMakesASparseFileOfTheVolumeSize) {
  auto t = FileTarget::Open({dir_ + "/new", 8 << 20, true, true});
  ASSERT_TRUE(t.ok()) << t.status();
  struct stat st {};
  ASSERT_EQ(stat((dir_ + "/new").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 8 << 20);
  EXPECT_LT(st.st_blocks * 512, 8 << 20);  // sparse
  EXPECT_EQ((*t)->size_bytes(), 8u << 20);
}

TEST_F(FileTargetTest, ReadWriteFlushDiscardWriteZeroes) {
  auto opened = FileTarget::Open({dir_ + "/io", 1 << 20, true, true});
  ASSERT_TRUE(opened.ok());
  FileTarget& t = **opened;
  void* mem = nullptr;
  ASSERT_EQ(posix_memalign(&mem, 4096, 8192), 0);
  char* buf = static_cast<char*>(mem);
  std::memset(buf, 'a', 8192);
  EXPECT_EQ(Run(t, {UBLK_IO_OP_WRITE, 0, 4096, 8192, buf}), 8192);
  EXPECT_EQ(Run(t, {UBLK_IO_OP_WRITE, UBLK_IO_F_FUA, 16384, 4096, buf}), 4096);
  std::memset(buf, 0, 8192);
  EXPECT_EQ(Run(t, {UBLK_IO_OP_READ, 0, 4096, 8192, buf}), 8192);
  EXPECT_EQ(std::string(buf, 8192), std::string(8192, 'a'));
  EXPECT_EQ(Run(t, {UBLK_IO_OP_FLUSH, 0, 0, 0, nullptr}), 0);
  EXPECT_EQ(Run(t, {UBLK_IO_OP_DISCARD, 0, 4096, 4096, nullptr}), 0);
  EXPECT_EQ(Run(t, {UBLK_IO_OP_WRITE_ZEROES, 0, 8192, 4096, nullptr}), 0);
  EXPECT_EQ(Run(t, {UBLK_IO_OP_READ, 0, 4096, 8192, buf}), 8192);
  EXPECT_EQ(std::string(buf, 8192), std::string(8192, '\0'));
  // Past the end, and an unknown op.
  EXPECT_EQ(Run(t, {UBLK_IO_OP_READ, 0, (1 << 20) - 4096, 8192, buf}), -EIO);
  EXPECT_EQ(Run(t, {UBLK_IO_OP_WRITE_SAME, 0, 0, 4096, buf}), -EOPNOTSUPP);
  free(mem);
}

// A file on tmpfs is read and written with pread/pwrite on the caller's
// thread (no SQE, no io-wq hop); turned off, or on another filesystem, the
// same I/O goes on the ring. Ring I/O on a file in memory (zero copy, or
// inline off) is io-wq threads' work, which the worker must not spin against.
TEST_F(FileTargetTest, FileInMemoryIsServedInlineWithoutTheRing) {
  struct statfs fs {};
  if (statfs("/dev/shm", &fs) != 0 || fs.f_type != TMPFS_MAGIC) GTEST_SKIP() << "no tmpfs /dev/shm";
  char tmpl[] = "/dev/shm/file_target_test.XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string shm = tmpl;
  auto ring = std::move(Ring::Create(8)).value();
  char buf[8192];
  for (bool allow : {true, false}) {
    SCOPED_TRACE(allow);
    FileTargetOptions o{shm + "/vol", 1 << 20, true, true};
    o.inline_memory_files = allow;
    auto opened = FileTarget::Open(o);
    ASSERT_TRUE(opened.ok()) << opened.status();
    FileTarget& t = **opened;
    EXPECT_EQ(t.inline_io(), allow);
    EXPECT_TRUE(t.ring_io_on_kernel_threads(/*zero_copy=*/true));
    EXPECT_EQ(t.ring_io_on_kernel_threads(/*zero_copy=*/false), !allow);
    std::memset(buf, allow ? 'i' : 'r', sizeof(buf));
    auto w = t.StartIo(*ring, {UBLK_IO_OP_WRITE, UBLK_IO_F_FUA, 8192, sizeof(buf), buf}, 7);
    if (allow) {
      EXPECT_EQ(w, std::optional<int32_t>(8192));
      EXPECT_EQ(io_uring_sq_ready(ring->raw()), 0u);  // nothing put on the ring
      std::memset(buf, 0, sizeof(buf));
      EXPECT_EQ(t.StartIo(*ring, {UBLK_IO_OP_READ, 0, 8192, sizeof(buf), buf}, 7),
                std::optional<int32_t>(8192));
      EXPECT_EQ(std::string(buf, sizeof(buf)), std::string(sizeof(buf), 'i'));
      // Flush and discard still go on the ring.
      EXPECT_EQ(Run(t, {UBLK_IO_OP_FLUSH, 0, 0, 0, nullptr}), 0);
    } else {
      EXPECT_FALSE(w.has_value());
      EXPECT_EQ(io_uring_sq_ready(ring->raw()), 1u);
      ASSERT_TRUE(ring->SubmitAndWait(absl::Seconds(5)).ok());
      int32_t res = 0;
      EXPECT_EQ(ring->DrainCompletions([&](const io_uring_cqe& c) { res = c.res; }), 1);
      EXPECT_EQ(res, 8192);
      std::memset(buf, 0, sizeof(buf));
      EXPECT_EQ(Run(t, {UBLK_IO_OP_READ, 0, 8192, sizeof(buf), buf}), 8192);
      EXPECT_EQ(std::string(buf, sizeof(buf)), std::string(sizeof(buf), 'r'));
    }
  }
  std::filesystem::remove_all(shm);
  // Not in memory: the ring (when the test's temp dir is not tmpfs itself).
  if (statfs(dir_.c_str(), &fs) == 0 && fs.f_type != TMPFS_MAGIC && fs.f_type != RAMFS_MAGIC) {
    auto opened = FileTarget::Open({dir_ + "/disk", 1 << 20, true, true});
    ASSERT_TRUE(opened.ok());
    EXPECT_FALSE((*opened)->inline_io());
    EXPECT_FALSE((*opened)->ring_io_on_kernel_threads(/*zero_copy=*/true));
    EXPECT_FALSE((*opened)->ring_io_on_kernel_threads(/*zero_copy=*/false));
  }
}

TEST(NullTargetTest, ReadsZerosWritesDropped) {
  NullTarget t(1 << 20);
  auto ring = std::move(Ring::Create(8)).value();
  char buf[512];
  std::memset(buf, 'x', sizeof(buf));
  EXPECT_EQ(t.StartIo(*ring, {UBLK_IO_OP_WRITE, 0, 0, 512, buf}, 1), 512);
  EXPECT_EQ(t.StartIo(*ring, {UBLK_IO_OP_READ, 0, 0, 512, buf}, 1), 512);
  EXPECT_EQ(std::string(buf, 512), std::string(512, '\0'));
  EXPECT_EQ(t.StartIo(*ring, {UBLK_IO_OP_FLUSH, 0, 0, 0, nullptr}, 1), 0);
  EXPECT_EQ(t.StartIo(*ring, {UBLK_IO_OP_WRITE_SAME, 0, 0, 0, nullptr}, 1), -EOPNOTSUPP);
}

}  // namespace
}  // namespace ublk
