// NullTarget: reads return zeros, writes are dropped, everything completes
// at once without touching the ring. For benchmarks and data-path tests.
// Zero copy is the exception: a READ's registered request pages are not
// ours to memset, and leaving them as they are could hand stale page
// contents to the reader, so it is zero-filled by a READ_FIXED from
// /dev/zero on the ring (no user-space copy either way).
// Reads::kUntouched is null_blk's behaviour (what the benchmarks compare
// with): a READ completes without data in user copy and zero copy, so the
// reader's buffer keeps what it held (a buffered reader may see stale page
// contents: root's benchmark tool only, never a volume). Get-data still
// hands the kernel zeros: it needs an address to copy from. A user-copy
// WRITE in that mode is committed without its data being copied out of the
// kernel (null_blk does not touch it either; it would be dropped anyway).
#pragma once

#include "ublk/target.h"
#include "ublk/unique_fd.h"

namespace ublk {

class NullTarget final : public Target {
 public:
  enum class Reads { kZeros, kUntouched };
  explicit NullTarget(uint64_t size_bytes, Reads reads = Reads::kZeros);
  uint64_t size_bytes() const override { return size_bytes_; }
  bool supports_discard() const override { return true; }
  const char* name() const override { return "null"; }
  bool reads_zeros() const override { return true; }
  bool reads_leave_buffer() const override { return reads_ == Reads::kUntouched; }
  bool writes_ignore_data() const override { return reads_ == Reads::kUntouched; }
  std::optional<int32_t> StartIo(Ring& ring, const TargetIo& io, uint64_t user_data) override;
  std::optional<int32_t> FinishIo(const TargetIo& io, int32_t cqe_res) override;

 private:
  const uint64_t size_bytes_;
  const Reads reads_;
  const UniqueFd zero_fd_;  // /dev/zero; invalid if it could not be opened
};

}  // namespace ublk
