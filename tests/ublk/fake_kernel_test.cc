// The fake kernel on its own: every control command, the raw I/O protocol in
// both copy modes (driven by hand on a real io_uring, no Worker), misuse
// errors, quiesce on server death and the recovery handshake with and
// without REISSUE.
#include "ublk/testing/fake_kernel.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <deque>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ublk/ring.h"

namespace ublk {
namespace {

using ::testing::HasSubstr;

constexpr uint16_t kDepth = 4;
constexpr uint64_t kSize = 1 << 20;

ublk_params GoodParams() {
  ublk_params p{};
  p.len = sizeof(p);
  p.types = UBLK_PARAM_TYPE_BASIC | UBLK_PARAM_TYPE_DISCARD;
  p.basic.logical_bs_shift = 9;
  p.basic.physical_bs_shift = 12;
  p.basic.max_sectors = 256;
  p.basic.dev_sectors = kSize >> 9;
  p.discard.discard_granularity = 4096;
  p.discard.max_discard_sectors = 1024;
  p.discard.max_discard_segments = 1;
  return p;
}

DeviceInfo Want(uint64_t flags, uint32_t id = kAnyDevId) {
  DeviceInfo d;
  d.dev_id = id;
  d.nr_hw_queues = 1;
  d.queue_depth = kDepth;
  d.max_io_buf_bytes = 128 * 1024;
  d.flags = flags;
  return d;
}

// A hand-driven ublk server for one queue.
class RawServer {
 public:
  RawServer(ControlDevice& control, uint32_t dev_id) {
    ring_ = std::move(Ring::Create(64)).value();
    auto ch = control.OpenQueue(dev_id, 0, kDepth);
    EXPECT_TRUE(ch.ok()) << ch.status();
    if (ch.ok()) ch_ = std::move(*ch);
  }
  QueueChannel& ch() { return *ch_; }
  Ring& ring() { return *ring_; }
  void Close() { ch_.reset(); }
  void FetchAll() {
    for (uint16_t t = 0; t < kDepth; ++t) ASSERT_TRUE(ch_->PrepFetch(*ring_, t, nullptr, t).ok());
    ASSERT_TRUE(ring_->Submit().ok());
  }
  // The next completion: (tag, ublk result); tag -1 on timeout.
  std::pair<int, int32_t> Next(absl::Duration timeout = absl::Seconds(5)) {
    const absl::Time deadline = absl::Now() + timeout;
    while (done_.empty() && absl::Now() < deadline) {
      EXPECT_TRUE(ring_->SubmitAndWait(absl::Milliseconds(20)).ok());
      ring_->DrainCompletions([&](const io_uring_cqe& c) {
        uint16_t tag = static_cast<uint16_t>(c.user_data);
        done_.emplace_back(tag, ch_->TranslateCompletion(tag, c.res));
      });
    }
    if (done_.empty()) return {-1, 0};
    auto r = done_.front();
    done_.pop_front();
    return r;
  }

 private:
  std::unique_ptr<Ring> ring_;
  std::unique_ptr<QueueChannel> ch_;
  std::deque<std::pair<int, int32_t>> done_;
};

class FakeKernelTest : public ::testing::Test {
 protected:
  FakeKernelTest() : kernel_(Options()), control_(kernel_.OpenControl(CmdEncoding::kIoctl)) {}
  static FakeKernelOptions Options() {
    FakeKernelOptions o;
    o.start_timeout = absl::Milliseconds(200);
    return o;
  }
  uint32_t AddConfigured(uint64_t flags) {
    auto info = control_->AddDevice(Want(flags));
    EXPECT_TRUE(info.ok()) << info.status();
    EXPECT_TRUE(control_->SetParams(info->dev_id, GoodParams()).ok());
    return info->dev_id;
  }
  // START_DEV runs on another thread, as it must.
  void Start(uint32_t id) {
    absl::Status s;
    std::thread t([&] { s = control_->StartDevice(id, getpid()); });
    t.join();
    ASSERT_TRUE(s.ok()) << s;
  }

  FakeKernel kernel_;
  std::unique_ptr<ControlDevice> control_;
};

TEST_F(FakeKernelTest, ControlCommands) {
  auto features = control_->GetFeatures();
  ASSERT_TRUE(features.ok());
  EXPECT_EQ(*features, kFake612Features);

  auto a = control_->AddDevice(Want(UBLK_F_USER_COPY));
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->dev_id, 0u);
  EXPECT_EQ(a->state, UBLK_S_DEV_DEAD);
  EXPECT_TRUE(a->flags & UBLK_F_USER_COPY);
  EXPECT_TRUE(a->flags & UBLK_F_CMD_IOCTL_ENCODE);  // 6.12 adds it by itself
  auto b = control_->AddDevice(Want(0, 5));
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->dev_id, 5u);
  EXPECT_EQ(control_->AddDevice(Want(0, 5)).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(control_->AddDevice(Want(0, 1u << 20)).status().code(),
            absl::StatusCode::kInvalidArgument);
  DeviceInfo zero_depth = Want(0);
  zero_depth.queue_depth = 0;
  EXPECT_EQ(control_->AddDevice(zero_depth).status().code(), absl::StatusCode::kInvalidArgument);

  auto bad = [&](auto mutate) {
    ublk_params p = GoodParams();
    mutate(p);
    return control_->SetParams(0, p).code();
  };
  EXPECT_EQ(bad([](ublk_params& p) { p.types = UBLK_PARAM_TYPE_DISCARD; }),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad([](ublk_params& p) { p.basic.logical_bs_shift = 8; }),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad([](ublk_params& p) { p.basic.logical_bs_shift = 13; }),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad([](ublk_params& p) { p.basic.physical_bs_shift = 8; }),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad([](ublk_params& p) { p.basic.dev_sectors = 0; }),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad([](ublk_params& p) { p.basic.max_sectors = 100000; }),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad([](ublk_params& p) { p.discard.discard_granularity = 0; }),
            absl::StatusCode::kInvalidArgument);
  // START_DEV needs params.
  EXPECT_EQ(control_->StartDevice(0, getpid()).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(control_->SetParams(0, GoodParams()).ok());
  auto p = control_->GetParams(0);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->basic.dev_sectors, kSize >> 9);
  EXPECT_EQ(p->types, UBLK_PARAM_TYPE_BASIC | UBLK_PARAM_TYPE_DISCARD);
  // START_DEV waits for every tag: nobody fetched.
  absl::Status s = control_->StartDevice(0, getpid());
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(control_->StartDevice(0, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(control_->StartUserRecovery(0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(control_->UpdateSize(0, 8).code(), absl::StatusCode::kUnimplemented);
  ASSERT_TRUE(control_->StopDevice(0).ok());
  ASSERT_TRUE(control_->DeleteDevice(0).ok());
  ASSERT_TRUE(control_->DeleteDevice(5).ok());
  EXPECT_EQ(kernel_.device_count(), 0u);
  for (auto st :
       {control_->GetDeviceInfo(0).status(), control_->DeleteDevice(0), control_->StopDevice(0),
        control_->SetParams(0, GoodParams()), control_->GetParams(0).status(),
        control_->StartDevice(0, 1), control_->StartUserRecovery(0),
        control_->EndUserRecovery(0, 1), control_->OpenQueue(0, 0, kDepth).status()}) {
    EXPECT_EQ(st.code(), absl::StatusCode::kNotFound) << st;
    EXPECT_THAT(std::string(st.message()), HasSubstr("device 0"));
  }
}

TEST_F(FakeKernelTest, DeviceLimitAndInjectedFailures) {
  FakeKernelOptions o = Options();
  o.ublks_max = 2;
  FakeKernel k(o);
  auto c = k.OpenControl(CmdEncoding::kIoctl);
  ASSERT_TRUE(c->AddDevice(Want(0)).ok());
  ASSERT_TRUE(c->AddDevice(Want(0)).ok());
  auto third = c->AddDevice(Want(0));
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(third.status().message()), HasSubstr("ublks_max=2"));
  ASSERT_TRUE(c->DeleteDevice(0).ok());
  k.FailNextAddDevice(ENOSPC);
  EXPECT_EQ(c->AddDevice(Want(0)).status().code(), absl::StatusCode::kResourceExhausted);
  k.FailNextAddDevice(ENOMEM);
  EXPECT_EQ(c->AddDevice(Want(0)).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(c->AddDevice(Want(0)).ok());  // one-shot
}

TEST_F(FakeKernelTest, Linux61RefusesIoctlEncodingAndDropsUserCopy) {
  FakeKernel k(FakeKernelOptions::Linux61());
  auto ioctl = k.OpenControl(CmdEncoding::kIoctl);
  EXPECT_EQ(ioctl->GetFeatures().status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(ioctl->AddDevice(Want(0)).status().code(), absl::StatusCode::kUnimplemented);
  auto legacy = k.OpenControl(CmdEncoding::kLegacy);
  EXPECT_EQ(legacy->GetFeatures().status().code(), absl::StatusCode::kUnimplemented);
  auto info = legacy->AddDevice(Want(UBLK_F_USER_COPY | UBLK_F_USER_RECOVERY));
  ASSERT_TRUE(info.ok());
  EXPECT_FALSE(info->flags & UBLK_F_USER_COPY);
  EXPECT_FALSE(info->flags & UBLK_F_CMD_IOCTL_ENCODE);
  EXPECT_TRUE(info->flags & UBLK_F_USER_RECOVERY);
  // A kernel without legacy opcodes (many 6.8+ builds).
  FakeKernelOptions no_legacy;
  no_legacy.accept_legacy = false;
  FakeKernel k2(no_legacy);
  EXPECT_EQ(k2.OpenControl(CmdEncoding::kLegacy)->AddDevice(Want(0)).status().code(),
            absl::StatusCode::kUnimplemented);
}

TEST_F(FakeKernelTest, UserCopyProtocolAndMisuse) {
  const uint32_t id = AddConfigured(UBLK_F_USER_COPY);
  RawServer srv(*control_, id);
  char buf[4096];
  EXPECT_EQ(srv.ch().PrepFetch(srv.ring(), 0, buf, 0).code(), absl::StatusCode::kInvalidArgument);
  srv.FetchAll();
  EXPECT_EQ(srv.ch().PrepFetch(srv.ring(), 1, nullptr, 1).code(),
            absl::StatusCode::kInvalidArgument);  // double fetch
  EXPECT_EQ(srv.ch().PrepCommitAndFetch(srv.ring(), 2, 0, nullptr, 2).code(),
            absl::StatusCode::kInvalidArgument);  // not owned
  EXPECT_EQ(control_->OpenQueue(id, 0, kDepth).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(control_->OpenQueue(id, 1, kDepth).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(control_->DeleteDevice(id).code(), absl::StatusCode::kFailedPrecondition);
  Start(id);
  EXPECT_EQ(kernel_.DeviceState(id), UBLK_S_DEV_LIVE);
  EXPECT_EQ(control_->SetParams(id, GoodParams()).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(control_->StartDevice(id, getpid()).code(), absl::StatusCode::kAlreadyExists);

  // WRITE: the server pulls the data with ReadRequestData.
  const std::string data(4096, 'w');
  auto w = kernel_.SubmitIoAsync(id, UBLK_IO_OP_WRITE, 8192, 4096, data);
  auto [tag, res] = srv.Next();
  ASSERT_GE(tag, 0);
  EXPECT_EQ(res, UBLK_IO_RES_OK);
  const ublksrv_io_desc& d = srv.ch().Desc(tag);
  EXPECT_EQ(ublksrv_get_op(&d), UBLK_IO_OP_WRITE);
  EXPECT_EQ(d.start_sector, 16u);
  EXPECT_EQ(d.nr_sectors, 8u);
  EXPECT_EQ(srv.ch().WriteResponseData(tag, buf, 4096, 0).code(),
            absl::StatusCode::kInvalidArgument);  // wrong direction
  EXPECT_EQ(srv.ch().ReadRequestData(tag, buf, 4096, 512).code(),
            absl::StatusCode::kInvalidArgument);  // beyond the request
  ASSERT_TRUE(srv.ch().ReadRequestData(tag, buf, 4096, 0).ok());
  EXPECT_EQ(std::string(buf, 4096), data);
  EXPECT_EQ(srv.ch().PrepCommitAndFetch(srv.ring(), tag, 4096, buf, tag).code(),
            absl::StatusCode::kInvalidArgument);  // buffer in user-copy mode
  ASSERT_TRUE(srv.ch().PrepCommitAndFetch(srv.ring(), tag, 4096, nullptr, tag).ok());
  auto wr = kernel_.Wait(w, absl::Seconds(5));
  ASSERT_TRUE(wr.ok());
  EXPECT_EQ(wr->result, 4096);

  // READ: the server pushes the data with WriteResponseData.
  auto r = kernel_.SubmitIoAsync(id, UBLK_IO_OP_READ, 0, 4096);
  std::tie(tag, res) = srv.Next();
  ASSERT_GE(tag, 0);
  EXPECT_EQ(ublksrv_get_op(&srv.ch().Desc(tag)), UBLK_IO_OP_READ);
  std::memset(buf, 'r', sizeof(buf));
  ASSERT_TRUE(srv.ch().WriteResponseData(tag, buf, 4096, 0).ok());
  ASSERT_TRUE(srv.ch().PrepCommitAndFetch(srv.ring(), tag, 4096, nullptr, tag).ok());
  auto rr = kernel_.Wait(r, absl::Seconds(5));
  ASSERT_TRUE(rr.ok());
  EXPECT_EQ(rr->data, std::string(4096, 'r'));

  // An error result reaches the block layer as is.
  auto e = kernel_.SubmitIoAsync(id, UBLK_IO_OP_FLUSH, 0, 0);
  std::tie(tag, res) = srv.Next();
  ASSERT_TRUE(srv.ch().PrepCommitAndFetch(srv.ring(), tag, -EIO, nullptr, tag).ok());
  EXPECT_EQ(kernel_.Wait(e, absl::Seconds(5))->result, -EIO);

  // STOP_DEV aborts every fetch.
  ASSERT_TRUE(control_->StopDevice(id).ok());
  EXPECT_EQ(kernel_.DeviceState(id), UBLK_S_DEV_DEAD);
  for (int i = 0; i < kDepth; ++i) {
    auto [t, r2] = srv.Next();
    ASSERT_GE(t, 0);
    EXPECT_EQ(r2, UBLK_IO_RES_ABORT);
  }
  EXPECT_EQ(kernel_.Read(id, 0, 4096)->result, -ENODEV);
  srv.Close();
  ASSERT_TRUE(control_->DeleteDevice(id).ok());
}

TEST_F(FakeKernelTest, GetDataProtocol) {
  const uint32_t id = AddConfigured(UBLK_F_NEED_GET_DATA);
  RawServer srv(*control_, id);
  srv.FetchAll();
  Start(id);
  const std::string data(8192, 'g');
  auto w = kernel_.SubmitIoAsync(id, UBLK_IO_OP_WRITE, 0, 8192, data);
  auto [tag, res] = srv.Next();
  ASSERT_GE(tag, 0);
  EXPECT_EQ(res, UBLK_IO_RES_NEED_GET_DATA);
  std::string buf(8192, '\0');
  EXPECT_EQ(srv.ch().ReadRequestData(tag, buf.data(), 8192, 0).code(),
            absl::StatusCode::kInvalidArgument);  // no user copy here
  EXPECT_EQ(srv.ch().PrepNeedGetData(srv.ring(), tag, nullptr, tag).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(srv.ch().PrepNeedGetData(srv.ring(), tag, buf.data(), tag).ok());
  std::tie(tag, res) = srv.Next();
  EXPECT_EQ(res, UBLK_IO_RES_OK);
  EXPECT_EQ(buf, data);
  ASSERT_TRUE(srv.ch().PrepCommitAndFetch(srv.ring(), tag, 8192, nullptr, tag).ok());
  EXPECT_EQ(kernel_.Wait(w, absl::Seconds(5))->result, 8192);

  auto r = kernel_.SubmitIoAsync(id, UBLK_IO_OP_READ, 0, 4096);
  std::tie(tag, res) = srv.Next();
  EXPECT_EQ(res, UBLK_IO_RES_OK);
  EXPECT_EQ(srv.ch().PrepNeedGetData(srv.ring(), tag, buf.data(), tag).code(),
            absl::StatusCode::kInvalidArgument);  // not a WRITE
  EXPECT_EQ(srv.ch().PrepCommitAndFetch(srv.ring(), tag, 4096, nullptr, tag).code(),
            absl::StatusCode::kInvalidArgument);  // READ data needs the buffer
  std::string out(4096, 'o');
  ASSERT_TRUE(srv.ch().PrepCommitAndFetch(srv.ring(), tag, 4096, out.data(), tag).ok());
  EXPECT_EQ(kernel_.Wait(r, absl::Seconds(5))->data, out);
  ASSERT_TRUE(control_->StopDevice(id).ok());
  srv.Close();
  ASSERT_TRUE(control_->DeleteDevice(id).ok());
}

// The server dies while it holds a WRITE; a new server recovers the device.
void ServerDiesHoldingIo(FakeKernel& kernel, ControlDevice& control, bool reissue) {
  const uint64_t flags =
      UBLK_F_USER_COPY | UBLK_F_USER_RECOVERY | (reissue ? UBLK_F_USER_RECOVERY_REISSUE : 0);
  auto info = control.AddDevice(Want(flags));
  ASSERT_TRUE(info.ok());
  const uint32_t id = info->dev_id;
  ASSERT_TRUE(control.SetParams(id, GoodParams()).ok());
  auto old_server = std::make_unique<RawServer>(control, id);
  old_server->FetchAll();
  absl::Status s;
  std::thread([&] { s = control.StartDevice(id, getpid()); }).join();
  ASSERT_TRUE(s.ok());

  auto held = kernel.SubmitIoAsync(id, UBLK_IO_OP_WRITE, 0, 4096, std::string(4096, 'h'));
  auto [tag, res] = old_server->Next();
  ASSERT_GE(tag, 0);
  EXPECT_EQ(kernel.inflight(id), 1);
  EXPECT_EQ(control.StartUserRecovery(id).code(), absl::StatusCode::kUnavailable);  // LIVE
  old_server.reset();  // killed: channel closed without committing
  EXPECT_EQ(kernel.DeviceState(id), UBLK_S_DEV_QUIESCED);
  EXPECT_EQ(control.OpenQueue(id, 0, kDepth).status().code(),
            absl::StatusCode::kFailedPrecondition);
  if (!reissue) {
    auto r = kernel.Wait(held, absl::Seconds(1));
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->result, -EIO);
  } else {
    EXPECT_EQ(kernel.Wait(held, absl::Milliseconds(20)).status().code(),
              absl::StatusCode::kDeadlineExceeded);
  }
  auto during = kernel.SubmitIoAsync(id, UBLK_IO_OP_READ, 0, 4096);
  EXPECT_EQ(control.EndUserRecovery(id, getpid()).code(), absl::StatusCode::kUnavailable);
  ASSERT_TRUE(control.StartUserRecovery(id).ok());
  RawServer srv(control, id);
  srv.FetchAll();
  std::thread([&] { s = control.EndUserRecovery(id, getpid()); }).join();
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(kernel.DeviceState(id), UBLK_S_DEV_LIVE);
  EXPECT_EQ(control.GetDeviceInfo(id)->ublksrv_pid, getpid());
  // The new server now gets the requeued WRITE (with REISSUE) and the READ.
  int served = 0;
  for (int want = reissue ? 2 : 1; served < want; ++served) {
    auto [t, r] = srv.Next();
    ASSERT_GE(t, 0);
    EXPECT_EQ(r, UBLK_IO_RES_OK);
    const ublksrv_io_desc& d = srv.ch().Desc(t);
    std::string buf(4096, 'n');
    if (ublksrv_get_op(&d) == UBLK_IO_OP_READ) {
      ASSERT_TRUE(srv.ch().WriteResponseData(t, buf.data(), 4096, 0).ok());
    } else {
      ASSERT_TRUE(srv.ch().ReadRequestData(t, buf.data(), 4096, 0).ok());
      EXPECT_EQ(buf, std::string(4096, 'h'));
    }
    ASSERT_TRUE(srv.ch().PrepCommitAndFetch(srv.ring(), t, 4096, nullptr, t).ok());
  }
  EXPECT_EQ(kernel.Wait(during, absl::Seconds(5))->result, 4096);
  if (reissue) {
    EXPECT_EQ(kernel.Wait(held, absl::Seconds(5))->result, 4096);
  }
  ASSERT_TRUE(control.StopDevice(id).ok());
  srv.Close();
  ASSERT_TRUE(control.DeleteDevice(id).ok());
}

TEST_F(FakeKernelTest, RecoveryReissuesIoTheDeadServerHeld) {
  ServerDiesHoldingIo(kernel_, *control_, /*reissue=*/true);
}

TEST_F(FakeKernelTest, RecoveryWithoutReissueFailsIoTheDeadServerHeld) {
  ServerDiesHoldingIo(kernel_, *control_, /*reissue=*/false);
}

TEST_F(FakeKernelTest, ServerDeathWithoutRecoveryAbortsTheDevice) {
  const uint32_t id = AddConfigured(UBLK_F_USER_COPY);
  auto srv = std::make_unique<RawServer>(*control_, id);
  srv->FetchAll();
  Start(id);
  auto held = kernel_.SubmitIoAsync(id, UBLK_IO_OP_READ, 0, 4096);
  ASSERT_GE(srv->Next().first, 0);
  srv.reset();
  EXPECT_EQ(kernel_.Wait(held, absl::Seconds(1))->result, -EIO);
  EXPECT_EQ(kernel_.Read(id, 0, 4096)->result, -EIO);
  EXPECT_EQ(control_->StartUserRecovery(id).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(control_->DeleteDevice(id).ok());
}

TEST_F(FakeKernelTest, VanishedDeviceAbortsFetchesAndIsNotFound) {
  const uint32_t id = AddConfigured(UBLK_F_USER_COPY);
  RawServer srv(*control_, id);
  srv.FetchAll();
  Start(id);
  kernel_.VanishDevice(id);
  for (int i = 0; i < kDepth; ++i) EXPECT_EQ(srv.Next().second, UBLK_IO_RES_ABORT);
  EXPECT_EQ(control_->GetDeviceInfo(id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(srv.ch().PrepFetch(srv.ring(), 0, nullptr, 0).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(kernel_.Read(id, 0, 4096)->result, -ENODEV);
}

TEST_F(FakeKernelTest, BlockLayerRefusesOutOfRangeIo) {
  const uint32_t id = AddConfigured(UBLK_F_USER_COPY);
  RawServer srv(*control_, id);
  srv.FetchAll();
  Start(id);
  EXPECT_EQ(kernel_.Read(id, kSize, 512)->result, -EIO);
  EXPECT_EQ(kernel_.Read(id, 100, 512)->result, -EINVAL);
  ASSERT_TRUE(control_->StopDevice(id).ok());
}

// Runs one fixed-buffer READ or WRITE of `len` bytes on `ring` to completion.
int32_t FixedIo(Ring& ring, bool read, int fd, uint64_t addr, uint32_t len, int index) {
  io_uring_sqe* sqe = ring.GetSqe();
  void* p = reinterpret_cast<void*>(static_cast<uintptr_t>(addr));
  if (read) {
    io_uring_prep_read_fixed(sqe, fd, p, len, 0, index);
  } else {
    io_uring_prep_write_fixed(sqe, fd, p, len, 0, index);
  }
  sqe->user_data = 0xfeed;
  int32_t res = -ETIME;
  for (int i = 0; i < 100 && res == -ETIME; ++i) {
    EXPECT_TRUE(ring.SubmitAndWait(absl::Milliseconds(20)).ok());
    ring.DrainCompletions([&](const io_uring_cqe& c) {
      if (c.user_data == 0xfeed) res = c.res;
    });
  }
  return res;
}

TEST(FakeKernelZeroCopyTest, AutoBufRegRegistersAtTheNamedIndexAndUnregistersAtCommit) {
  FakeKernel kernel(FakeKernelOptions::Linux7());
  auto control = kernel.OpenControl(CmdEncoding::kIoctl);
  auto info = control->AddDevice(Want(UBLK_F_AUTO_BUF_REG));
  ASSERT_TRUE(info.ok());
  EXPECT_NE(info->flags & UBLK_F_AUTO_BUF_REG, 0u);
  ASSERT_TRUE(control->SetParams(info->dev_id, GoodParams()).ok());
  const uint32_t id = info->dev_id;
  RawServer srv(*control, id);
  ASSERT_EQ(io_uring_register_buffers_sparse(srv.ring().raw(), 16), 0);
  char buf[512];
  EXPECT_EQ(srv.ch().PrepFetch(srv.ring(), 0, buf, 0).code(),
            absl::StatusCode::kInvalidArgument);  // no buffer in zero-copy mode
  srv.ch().SetAutoBufRegBase(10);                 // tags use indices 10..13
  srv.FetchAll();
  std::thread starter([&] { EXPECT_TRUE(control->StartDevice(id, getpid()).ok()); });
  starter.join();

  std::string tmpl = ::testing::TempDir() + "/fkzc.XXXXXX";
  int fd = mkstemp(tmpl.data());
  ASSERT_GE(fd, 0);
  unlink(tmpl.c_str());

  // WRITE: its payload is readable through the fixed buffer at base + tag.
  const std::string payload(4096, 'z');
  auto w = kernel.SubmitIoAsync(id, UBLK_IO_OP_WRITE, 0, 4096, payload);
  auto [tag, res] = srv.Next();
  ASSERT_GE(tag, 0);
  EXPECT_EQ(res, UBLK_IO_RES_OK);
  const uint16_t t = static_cast<uint16_t>(tag);
  EXPECT_EQ(FixedIo(srv.ring(), /*read=*/false, fd, srv.ch().FixedBufferAddress(t), 4096, 10 + t),
            4096);
  std::string back(4096, '\0');
  ASSERT_EQ(pread(fd, back.data(), 4096, 0), 4096);
  EXPECT_EQ(back, payload);
  // A commit from another ring than the registration's: refused (the kernel
  // would never complete the request).
  auto other = std::move(Ring::Create(8)).value();
  EXPECT_EQ(srv.ch().PrepCommitAndFetch(*other, t, 4096, nullptr, t).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(srv.ch().PrepCommitAndFetch(srv.ring(), t, 4096, nullptr, t).ok());
  EXPECT_EQ(kernel.Wait(w, absl::Seconds(5))->result, 4096);
  // The commit emptied the slot: fixed I/O on it fails now.
  EXPECT_LT(FixedIo(srv.ring(), /*read=*/true, fd, 0, 512, 10 + t), 0);

  // READ: what the server puts into the fixed buffer is what the reader gets.
  const std::string file_data(4096, 'r');
  ASSERT_EQ(pwrite(fd, file_data.data(), 4096, 0), 4096);
  auto r = kernel.SubmitIoAsync(id, UBLK_IO_OP_READ, 4096, 4096);
  auto [rtag, rres] = srv.Next();
  ASSERT_GE(rtag, 0);
  EXPECT_EQ(rres, UBLK_IO_RES_OK);
  const uint16_t rt = static_cast<uint16_t>(rtag);
  EXPECT_EQ(FixedIo(srv.ring(), /*read=*/true, fd, srv.ch().FixedBufferAddress(rt), 4096, 10 + rt),
            4096);
  ASSERT_TRUE(srv.ch().PrepCommitAndFetch(srv.ring(), rt, 4096, nullptr, rt).ok());
  auto rr = kernel.Wait(r, absl::Seconds(5));
  ASSERT_TRUE(rr.ok());
  EXPECT_EQ(rr->data, file_data);
  EXPECT_EQ(kernel.auto_buf_regs(), 2);
  close(fd);
  ASSERT_TRUE(control->StopDevice(id).ok());
  srv.Close();
  ASSERT_TRUE(control->DeleteDevice(id).ok());
}

TEST(FakeKernelZeroCopyTest, WithoutAnIndexEveryTagNamesSlotZeroAndTheSecondRequestFails) {
  FakeKernel kernel(FakeKernelOptions::Linux7());
  auto control = kernel.OpenControl(CmdEncoding::kIoctl);
  auto info = control->AddDevice(Want(UBLK_F_AUTO_BUF_REG));
  ASSERT_TRUE(info.ok());
  ASSERT_TRUE(control->SetParams(info->dev_id, GoodParams()).ok());
  const uint32_t id = info->dev_id;
  RawServer srv(*control, id);
  ASSERT_EQ(io_uring_register_buffers_sparse(srv.ring().raw(), 4), 0);
  srv.FetchAll();  // no SetAutoBufRegBase: a zeroed SQE addr names index 0
  std::thread starter([&] { EXPECT_TRUE(control->StartDevice(id, getpid()).ok()); });
  starter.join();
  auto first = kernel.SubmitIoAsync(id, UBLK_IO_OP_READ, 0, 4096);
  auto second = kernel.SubmitIoAsync(id, UBLK_IO_OP_READ, 4096, 4096);
  auto [tag, res] = srv.Next();
  ASSERT_GE(tag, 0);
  EXPECT_EQ(res, UBLK_IO_RES_OK);
  // Slot 0 is taken: the kernel fails the second request before delivery.
  auto s = kernel.Wait(second, absl::Seconds(5));
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->result, -EIO);
  EXPECT_EQ(srv.Next(absl::Milliseconds(50)).first, -1);
  ASSERT_TRUE(control->StopDevice(id).ok());
  srv.Close();
  ASSERT_TRUE(control->DeleteDevice(id).ok());
  (void)first;
}

}  // namespace
}  // namespace ublk
