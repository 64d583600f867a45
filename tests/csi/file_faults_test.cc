// A full or failing disk under every file step of the requests that write
// the data dir (CreateVolume, CreateSnapshot, clone, restore,
// ControllerExpandVolume, the record write of NodeStage): through the
// FaultInjectingFileSystem, each step fails with ENOSPC or EIO, once or until
// cleared. The call must fail with RESOURCE_EXHAUSTED (no space) or INTERNAL
// naming the step and the path; the data dir must hold exactly what it held
// before (records, backing and snapshot files, no temp file); after a
// restart every volume and snapshot loads with its record and data
// unchanged; and once the fault is gone the same request succeeds. Last, the
// same on a real full filesystem: a 2 MiB tmpfs in a private mount namespace.
#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "csi/crash_loop_guard.h"
#include "csi/fault_file_system.h"
#include "gmock/gmock.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "tests/csi/manager_test_fixture.h"

namespace ublk_csi {
namespace {

using ::testing::HasSubstr;

enum class Rpc { kCreate, kSnapshot, kClone, kRestore, kExpand, kStage };

const char* RpcName(Rpc r) {
  switch (r) {
    case Rpc::kCreate:
      return "CreateVolume";
    case Rpc::kSnapshot:
      return "CreateSnapshot";
    case Rpc::kClone:
      return "CloneVolume";
    case Rpc::kRestore:
      return "RestoreSnapshot";
    case Rpc::kExpand:
      return "ControllerExpandVolume";
    case Rpc::kStage:
      return "NodeStageVolume";
  }
  return "?";
}

// One file step of one request.
struct Step {
  Rpc rpc;
  std::string name;
  FsOp op;
  const char* path;  // a part of the step's path
  int after;         // matching calls that succeed first
  const char* said;  // what the error must call the step
};

struct Case {
  Step step;
  int err;
  bool once;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << RpcName(c.step.rpc) << " " << c.step.name << " " << (c.err == ENOSPC ? "ENOSPC" : "EIO")
      << (c.once ? " once" : " until cleared");
}

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  std::string n = absl::StrCat(RpcName(info.param.step.rpc), "_", info.param.step.name, "_",
                               info.param.err == ENOSPC ? "ENOSPC" : "EIO", "_",
                               info.param.once ? "Once" : "UntilCleared");
  for (char& c : n) {
    if (!isalnum(static_cast<unsigned char>(c)) && c != '_') c = '_';
  }
  return n;
}

// The five steps of an atomic record write, for the `nth` write (0-based)
// whose temp file name contains `tmp`.
void AddRecordSteps(Rpc rpc, const char* tmp, int nth, const std::string& which,
                    std::vector<Step>* out) {
  out->push_back({rpc, which + "Record_CreateTemp", FsOp::kCreate, tmp, nth, "create"});
  out->push_back({rpc, which + "Record_Write", FsOp::kWrite, tmp, nth, "write"});
  out->push_back({rpc, which + "Record_Fsync", FsOp::kSync, tmp, nth, "fsync"});
  out->push_back({rpc, which + "Record_Rename", FsOp::kRename, tmp, nth, "rename"});
  out->push_back({rpc, which + "Record_FsyncDir", FsOp::kSyncDir, "/records", nth, "fsync dir"});
}

// The steps of copying a file into `dst_dir` ("/volumes/" or "/snapshots/").
void AddCopySteps(Rpc rpc, const char* src_dir, const char* dst_dir, std::vector<Step>* out) {
  out->push_back({rpc, "CopyOpenSource", FsOp::kOpen, src_dir, 0, "open"});
  out->push_back({rpc, "CopyCreate", FsOp::kCreate, dst_dir, 0, "create"});
  out->push_back({rpc, "CopyReflink", FsOp::kClone, dst_dir, 0, "reflink"});
  out->push_back({rpc, "CopyWrite", FsOp::kWrite, dst_dir, 0, "write"});
  out->push_back({rpc, "CopyTruncate", FsOp::kTruncate, dst_dir, 0, "size"});
  out->push_back({rpc, "CopyFsync", FsOp::kSync, dst_dir, 0, "fsync"});
}

std::vector<Step> AllSteps() {
  std::vector<Step> s;
  // CreateVolume: record (CREATING), backing file, record (READY).
  AddRecordSteps(Rpc::kCreate, ".volume.tmp", 0, "Creating", &s);
  s.push_back({Rpc::kCreate, "BackingCreate", FsOp::kCreate, "/volumes/", 0, "create"});
  s.push_back({Rpc::kCreate, "BackingTruncate", FsOp::kTruncate, "/volumes/", 0, "size"});
  s.push_back({Rpc::kCreate, "BackingFsync", FsOp::kSync, "/volumes/", 0, "fsync"});
  AddRecordSteps(Rpc::kCreate, ".volume.tmp", 1, "Ready", &s);
  // CreateSnapshot: record (not ready), copy, record (ready).
  AddRecordSteps(Rpc::kSnapshot, ".snapshot.tmp", 0, "Pending", &s);
  AddCopySteps(Rpc::kSnapshot, "/volumes/", "/snapshots/", &s);
  AddRecordSteps(Rpc::kSnapshot, ".snapshot.tmp", 1, "Ready", &s);
  // A clone of a volume and a restore of a snapshot: the copy steps.
  AddCopySteps(Rpc::kClone, "/volumes/", "/volumes/", &s);
  AddRecordSteps(Rpc::kClone, ".volume.tmp", 1, "Ready", &s);
  AddCopySteps(Rpc::kRestore, "/snapshots/", "/volumes/", &s);
  // ControllerExpandVolume: grow the backing file, then its record.
  s.push_back({Rpc::kExpand, "BackingOpen", FsOp::kOpen, "/volumes/", 0, "open"});
  s.push_back({Rpc::kExpand, "BackingTruncate", FsOp::kTruncate, "/volumes/", 0, "size"});
  s.push_back({Rpc::kExpand, "BackingFsync", FsOp::kSync, "/volumes/", 0, "fsync"});
  AddRecordSteps(Rpc::kExpand, ".volume.tmp", 0, "Updated", &s);
  // A plain record update: NodeStage records the staging path.
  AddRecordSteps(Rpc::kStage, ".volume.tmp", 0, "Staged", &s);
  return s;
}

std::vector<Case> AllCases() {
  std::vector<Case> out;
  for (const Step& s : AllSteps()) {
    for (int err : {ENOSPC, EIO}) {
      for (bool once : {true, false}) out.push_back({s, err, once});
    }
  }
  return out;
}

std::string ReadRaw(const std::string& path) {
  std::string out;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "<missing>";
  char buf[65536];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return out;
}

// A data file as its size and its 64 KiB blocks that hold a non-zero byte
// (found through SEEK_DATA, so holes are never read): what the checks
// compare, without copying megabytes of zeros per check (under TSan every
// such byte costs shadow memory and page faults: 5 s per FileFaults case).
struct FileData {
  static constexpr int64_t kBlock = 65536;
  int64_t size = -1;  // -1: missing
  std::map<int64_t, std::string> blocks;
};

FileData ReadData(const std::string& path) {
  FileData out;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return out;
  }
  out.size = st.st_size;
  static const std::string kZeros(FileData::kBlock, '\0');
  char buf[FileData::kBlock];
  for (off_t data = 0; data < st.st_size;) {
    off_t d = ::lseek(fd, data, SEEK_DATA);
    if (d < 0 && errno == ENXIO) break;  // no data past `data`
    off_t h = d < 0 ? st.st_size : ::lseek(fd, d, SEEK_HOLE);
    if (d < 0) d = data;  // no SEEK_DATA here: read everything
    if (h < 0) h = st.st_size;
    for (int64_t b = d / FileData::kBlock * FileData::kBlock; b < h; b += FileData::kBlock) {
      ssize_t n = ::pread(fd, buf, sizeof(buf), b);
      if (n <= 0) break;
      if (std::memcmp(buf, kZeros.data(), static_cast<size_t>(n)) != 0) {
        out.blocks[b].assign(buf, static_cast<size_t>(n));
      }
    }
    data = h;
  }
  ::close(fd);
  return out;
}

// `a` and `b` are the same bytes once the shorter is padded with zeros.
bool SameUpToZeros(const std::string& a, const std::string& b) {
  const size_t n = std::min(a.size(), b.size());
  if (a.compare(0, n, b, 0, n) != 0) return false;
  const std::string& longer = a.size() > b.size() ? a : b;
  return longer.find_first_not_of('\0', n) == std::string::npos;
}

// "<size>" and each non-zero block as "@<offset>:<bytes>": equal strings,
// equal files; SameData parses it back.
std::string Encode(const FileData& f) {
  if (f.size < 0) return "<missing>";
  std::string out = absl::StrCat(f.size);
  for (const auto& [off, bytes] : f.blocks)
    absl::StrAppend(&out, "\n@", off, ",", bytes.size(), ":", bytes);
  return out;
}

std::optional<FileData> Decode(const std::string& s) {
  FileData f;
  size_t pos = s.find('\n');
  if (!absl::SimpleAtoi(s.substr(0, pos), &f.size)) return std::nullopt;
  while (pos != std::string::npos && pos < s.size()) {
    // "\n@<off>,<len>:<bytes>"
    const size_t comma = s.find(',', pos);
    const size_t colon = s.find(':', comma);
    int64_t off = 0;
    size_t len = 0;
    if (comma == std::string::npos || colon == std::string::npos ||
        !absl::SimpleAtoi(s.substr(pos + 2, comma - pos - 2), &off) ||
        !absl::SimpleAtoi(s.substr(comma + 1, colon - comma - 1), &len)) {
      return std::nullopt;
    }
    f.blocks[off] = s.substr(colon + 1, len);
    pos = colon + 1 + len;
  }
  return f;
}

std::string ReadAll(const std::string& path) { return Encode(ReadData(path)); }

// A message's bytes with map entries in a fixed order (plain serialization
// orders them as the hash map iterates).
std::string Det(const google::protobuf::Message& m) {
  std::string out;
  {
    google::protobuf::io::StringOutputStream sos(&out);
    google::protobuf::io::CodedOutputStream cos(&sos);
    cos.SetSerializationDeterministic(true);
    m.SerializeToCodedStream(&cos);
  }
  return out;
}

// A record file's content, comparable across writes; other files' bytes.
std::string Content(const std::string& rel, std::string bytes) {
  if (absl::EndsWith(rel, ".volume")) {
    records::VolumeRecord r;
    if (!r.ParseFromString(bytes)) return "<unparsable volume record>";
    return Det(r);
  }
  if (absl::EndsWith(rel, ".snapshot")) {
    records::SnapshotRecord r;
    if (!r.ParseFromString(bytes)) return "<unparsable snapshot record>";
    return Det(r);
  }
  return bytes;
}

// Every file under `dir` (one level of subdirs) with its content.
std::map<std::string, std::string> DirContents(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const char* sub : {"records", "volumes", "snapshots"}) {
    const std::string d = absl::StrCat(dir, "/", sub);
    DIR* dp = ::opendir(d.c_str());
    if (dp == nullptr) continue;
    while (struct dirent* e = ::readdir(dp)) {
      const std::string name = e->d_name;
      if (name == "." || name == ".." || name == "corrupt") continue;
      const std::string rel = absl::StrCat(sub, "/", name);
      const std::string path = absl::StrCat(dir, "/", rel);
      out[rel] = sub == std::string("records") ? Content(rel, ReadRaw(path)) : ReadAll(path);
    }
    ::closedir(dp);
  }
  return out;
}

// `after` (ReadAll) holds `before`'s data: the same bytes, perhaps followed
// by zeros (a backing file grown by an expansion whose record write failed).
bool SameData(const std::string& before, const std::string& after) {
  std::optional<FileData> b = Decode(before), a = Decode(after);
  if (!b || !a || b->size < 0 || a->size < b->size) return false;
  for (const auto& [off, bytes] : b->blocks) {
    auto it = a->blocks.find(off);
    if (it == a->blocks.end() || !SameUpToZeros(bytes, it->second)) return false;
  }
  for (const auto& [off, bytes] : a->blocks) {
    if (b->blocks.count(off) == 0) return false;  // non-zero where `before` had zeros
  }
  return true;
}

class FileFaults : public ManagerTest, public ::testing::WithParamInterface<Case> {
 protected:
  void SetUp() override {
    fs_ = &faults_;
    ManagerTest::SetUp();
    if (HasFatalFailure()) return;
    // What must survive: a volume with data in two extents, a snapshot of
    // it, and a second (block) volume.
    auto a = Create("keep-a", 8 * kMiB);
    ASSERT_TRUE(a.ok()) << a.status();
    a_ = *a;
    WriteData(a_, 0, "first extent of keep-a");
    WriteData(a_, 5 * kMiB, "second extent of keep-a");
    auto b = Create("keep-b", 4 * kMiB, BlockCap());
    ASSERT_TRUE(b.ok()) << b.status();
    b_ = *b;
    WriteData(b_, 4096, "data of keep-b");
    csi::v1::CreateSnapshotRequest snap;
    snap.set_name("keep-snap");
    snap.set_source_volume_id(a_);
    auto s = manager_->CreateSnapshot(snap);
    ASSERT_TRUE(s.ok()) << s.status();
    snap_ = s->snapshot().snapshot_id();
    before_ = DirContents(data_);
    before_volumes_ = Listed();
    before_snapshots_ = ListedSnapshots();
  }

  void WriteData(const std::string& id, int64_t off, const std::string& text) {
    auto rec = manager_->GetRecord(id);
    ASSERT_TRUE(rec.ok());
    int fd = ::open(store_->Abs(rec->backing_file()).c_str(), O_WRONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pwrite(fd, text.data(), text.size(), off), static_cast<ssize_t>(text.size()));
    ::close(fd);
  }

  std::map<std::string, std::string> Listed() {
    std::map<std::string, std::string> out;
    auto r = manager_->ListVolumes({});
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return out;
    for (const auto& e : r->entries()) {
      out[e.volume().volume_id()] = Det(e.volume());
      auto rec = manager_->GetRecord(e.volume().volume_id());
      if (rec.ok()) {
        rec->clear_schema_version();  // set on disk, not in memory
        out[e.volume().volume_id()] += Det(*rec);
      }
    }
    return out;
  }

  std::map<std::string, std::string> ListedSnapshots() {
    std::map<std::string, std::string> out;
    auto r = manager_->ListSnapshots({});
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return out;
    for (const auto& e : r->entries()) {
      out[e.snapshot().snapshot_id()] = Det(e.snapshot());
    }
    return out;
  }

  // The request of the step under test (the same one for every retry).
  absl::Status Call(Rpc rpc, std::string* made) {
    switch (rpc) {
      case Rpc::kCreate:
      case Rpc::kClone:
      case Rpc::kRestore: {
        csi::v1::CreateVolumeRequest r = CreateReq("new-vol", 16 * kMiB);
        if (rpc == Rpc::kClone) {
          r.mutable_volume_content_source()->mutable_volume()->set_volume_id(a_);
        }
        if (rpc == Rpc::kRestore) {
          r.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(snap_);
        }
        auto resp = manager_->CreateVolume(r);
        if (resp.ok()) *made = resp->volume().volume_id();
        return resp.status();
      }
      case Rpc::kSnapshot: {
        csi::v1::CreateSnapshotRequest r;
        r.set_name("new-snap");
        r.set_source_volume_id(a_);
        auto resp = manager_->CreateSnapshot(r);
        if (resp.ok()) *made = resp->snapshot().snapshot_id();
        return resp.status();
      }
      case Rpc::kExpand: {
        csi::v1::ControllerExpandVolumeRequest r;
        r.set_volume_id(a_);
        r.mutable_capacity_range()->set_required_bytes(12 * kMiB);
        auto resp = manager_->ControllerExpandVolume(r);
        if (resp.ok()) *made = absl::StrCat(resp->capacity_bytes());
        return resp.status();
      }
      case Rpc::kStage:
        *made = b_;
        return Stage(b_, Path("stage-b"), BlockCap());
    }
    return absl::InternalError("unknown rpc");
  }

  // Every file, record and listing as before the failed call.
  void ExpectIntact(const char* when) {
    SCOPED_TRACE(when);
    std::map<std::string, std::string> now = DirContents(data_);
    std::set<std::string> before_names, now_names;
    for (const auto& [k, _] : before_) before_names.insert(k);
    for (const auto& [k, _] : now) now_names.insert(k);
    EXPECT_EQ(now_names, before_names) << "files left behind or lost";
    for (const auto& [name, bytes] : before_) {
      auto it = now.find(name);
      if (it == now.end()) continue;
      EXPECT_TRUE(absl::StartsWith(name, "records/") ? it->second == bytes
                                                     : SameData(bytes, it->second))
          << name << " changed";
    }
    EXPECT_EQ(Listed(), before_volumes_);
    EXPECT_EQ(ListedSnapshots(), before_snapshots_);
  }

  FaultInjectingFileSystem faults_{DefaultFileSystem()};
  std::string a_, b_, snap_;
  std::map<std::string, std::string> before_;
  std::map<std::string, std::string> before_volumes_, before_snapshots_;
};

TEST_P(FileFaults, FailsCleanlyLosesNothingAndRetrySucceeds) {
  const Case& c = GetParam();
  const Step& step = c.step;
  const bool copies =
      step.rpc == Rpc::kSnapshot || step.rpc == Rpc::kClone || step.rpc == Rpc::kRestore;
  faults_.Inject({step.op, step.path, c.err, step.after, c.once});
  // Where a reflink works the data path below it is never taken: refuse it,
  // so the copy steps run on any filesystem.
  if (copies && step.op != FsOp::kClone) faults_.Inject({FsOp::kClone, "", EOPNOTSUPP});

  std::string made;
  absl::Status s = Call(step.rpc, &made);
  ASSERT_GE(faults_.injected(), 1) << "the step never ran: " << step.name;
  ASSERT_FALSE(s.ok()) << "the call succeeded through a failed " << step.name;
  EXPECT_EQ(s.code(),
            c.err == ENOSPC ? absl::StatusCode::kResourceExhausted : absl::StatusCode::kInternal)
      << s;
  EXPECT_THAT(s.message(), HasSubstr(step.said));
  EXPECT_THAT(s.message(), HasSubstr(data_));
  EXPECT_THAT(s.message(), HasSubstr(step.path));
  EXPECT_THAT(s.message(), HasSubstr(c.err == ENOSPC ? "No space left" : "Input/output error"));
  ExpectIntact("after the failed call");

  faults_.Clear();
  if (c.once) {
    // The retry runs in the same process, on the state the failure left.
  } else {
    Restart();
    ExpectIntact("after a restart");
  }
  std::string made_again;
  ASSERT_TRUE(Call(step.rpc, &made_again).ok());
  std::string made_third;
  ASSERT_TRUE(Call(step.rpc, &made_third).ok());
  EXPECT_EQ(made_third, made_again) << "the retry is not idempotent";

  // The survivors, and what the retry made, after a restart.
  Restart();
  for (const auto& [id, listed] : before_volumes_) {
    auto rec = manager_->GetRecord(id);
    ASSERT_TRUE(rec.ok()) << id << ": " << rec.status();
    EXPECT_EQ(rec->state(), records::VolumeRecord::READY);
    const std::string path = store_->Abs(rec->backing_file());
    EXPECT_TRUE(SameData(before_.at(rec->backing_file()), ReadAll(path))) << id << ": data changed";
  }
  EXPECT_TRUE(SameData(before_.at(RecordStore::SnapshotFileRel(snap_)),
                       ReadAll(store_->Abs(RecordStore::SnapshotFileRel(snap_)))));
  switch (step.rpc) {
    case Rpc::kCreate:
    case Rpc::kClone:
    case Rpc::kRestore: {
      auto rec = manager_->GetRecord(made_again);
      ASSERT_TRUE(rec.ok()) << rec.status();
      EXPECT_EQ(rec->capacity_bytes(), 16 * kMiB);
      if (step.rpc != Rpc::kCreate) {
        // A copy of keep-a (the snapshot holds the same bytes).
        EXPECT_TRUE(SameData(before_.at(RecordStore::VolumeFileRel(a_)),
                             ReadAll(store_->Abs(rec->backing_file()))));
      }
      EXPECT_EQ(Listed().size(), before_volumes_.size() + 1);
      break;
    }
    case Rpc::kSnapshot:
      EXPECT_EQ(ListedSnapshots().size(), before_snapshots_.size() + 1);
      EXPECT_EQ(ReadAll(store_->Abs(RecordStore::SnapshotFileRel(made_again))),
                ReadAll(store_->Abs(RecordStore::VolumeFileRel(a_))));
      break;
    case Rpc::kExpand:
      EXPECT_EQ(manager_->GetRecord(a_)->capacity_bytes(), 12 * kMiB);
      break;
    case Rpc::kStage:
      EXPECT_EQ(manager_->GetRecord(b_)->staged_path(), Path("stage-b"));
      break;
  }
}

INSTANTIATE_TEST_SUITE_P(EveryStep, FileFaults, ::testing::ValuesIn(AllCases()), CaseName);

// The seam itself: a fault hits only matching calls, after N of them, once or
// until cleared; and the real file system reports ENOSPC as
// RESOURCE_EXHAUSTED naming the step and the path.
// The comparison the cases rest on: sparse files compared by their non-zero
// blocks must still see every changed, lost or added byte.
TEST(FileFaultsHelpers, SameDataSeesEveryChangedByte) {
  ublk_test::TempDir dir;
  auto write = [&](const std::string& name, int64_t size,
                   std::vector<std::pair<int64_t, std::string>> data) {
    const std::string path = dir.path() + "/" + name;
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::ftruncate(fd, size), 0);
    for (const auto& [off, bytes] : data) {
      EXPECT_EQ(::pwrite(fd, bytes.data(), bytes.size(), off), static_cast<ssize_t>(bytes.size()));
    }
    ::close(fd);
    return ReadAll(path);
  };
  const int64_t kM = 1 << 20;
  const std::string base = write("base", 8 * kM, {{0, "first"}, {5 * kM + 3, "second"}});
  EXPECT_TRUE(SameData(base, write("same", 8 * kM, {{0, "first"}, {5 * kM + 3, "second"}})));
  EXPECT_EQ(base, write("same2", 8 * kM, {{0, "first"}, {5 * kM + 3, "second"}}));
  EXPECT_TRUE(SameData(base, write("grown", 16 * kM, {{0, "first"}, {5 * kM + 3, "second"}})));
  EXPECT_NE(base, write("grown2", 16 * kM, {{0, "first"}, {5 * kM + 3, "second"}}));
  EXPECT_FALSE(SameData(base, write("changed", 8 * kM, {{0, "first"}, {5 * kM + 3, "secon!"}})));
  EXPECT_FALSE(SameData(base, write("lost", 8 * kM, {{0, "first"}})));
  EXPECT_FALSE(SameData(
      base, write("added", 8 * kM, {{0, "first"}, {5 * kM + 3, "second"}, {7 * kM, "x"}})));
  EXPECT_FALSE(SameData(
      base, write("beyond", 16 * kM, {{0, "first"}, {5 * kM + 3, "second"}, {12 * kM, "x"}})));
  EXPECT_FALSE(SameData(base, write("shrunk", 4 * kM, {{0, "first"}})));
  EXPECT_FALSE(SameData(base, ReadAll(dir.path() + "/missing")));
  // A block written with zeros is a hole's equal.
  EXPECT_TRUE(SameData(
      base, write("zeros", 8 * kM,
                  {{0, "first"}, {5 * kM + 3, "second"}, {2 * kM, std::string(65536, '\0')}})));
}

TEST(FaultInjectingFileSystem, MatchesOpPathCountAndLifetime) {
  ublk_test::TempDir dir;
  FaultInjectingFileSystem fs(DefaultFileSystem());
  fs.Inject({FsOp::kSync, "b.txt", EIO, /*after=*/1, /*once=*/true});
  auto write = [&](const std::string& name) {
    return fs.WriteFileAtomically(dir.path() + "/" + name, dir.path() + "/" + name + ".tmp", "x");
  };
  EXPECT_TRUE(write("a.txt").ok());  // another path
  EXPECT_TRUE(write("b.txt").ok());  // the first match passes
  absl::Status s = write("b.txt");
  EXPECT_TRUE(absl::IsInternal(s)) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("fsync " + dir.path() + "/b.txt.tmp"));
  EXPECT_TRUE(write("b.txt").ok());  // once: spent
  EXPECT_EQ(fs.injected(), 1);
  EXPECT_EQ(::access((dir.path() + "/b.txt.tmp").c_str(), F_OK), -1) << "temp file left";

  fs.Inject({FsOp::kRename, "", ENOSPC});
  for (int i = 0; i < 3; ++i) {
    s = write("c.txt");
    EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
  }
  fs.Clear();
  EXPECT_TRUE(write("c.txt").ok());
  EXPECT_EQ(fs.injected(), 4);
}

// The crash-loop counter is written the same way: a failed write keeps the
// old count and surfaces the step.
TEST(FileFaultsCrashLoopGuard, FailedCounterWriteKeepsTheOldCount) {
  ublk_test::TempDir dir;
  FaultInjectingFileSystem fs(DefaultFileSystem());
  auto g = CrashLoopGuard::Begin(dir.path(), 2, nullptr, &fs);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(CrashLoopGuard::ReadCount(dir.path(), 2), 1);
  fs.Inject({FsOp::kWrite, CrashLoopGuard::kFileName, ENOSPC});
  absl::Status s = (*g)->Complete();
  EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(CrashLoopGuard::kFileName));
  EXPECT_EQ(CrashLoopGuard::ReadCount(dir.path(), 2), 1);
  auto again = CrashLoopGuard::Begin(dir.path(), 2, nullptr, &fs);
  EXPECT_TRUE(absl::IsResourceExhausted(again.status())) << again.status();
  EXPECT_EQ(CrashLoopGuard::ReadCount(dir.path(), 2), 1);
}

// The way the world runs out of space: a 2 MiB tmpfs, filled. Runs in a
// child (a private mount namespace keeps the mount from the host) that
// reports each broken property on stderr and exits non-zero.
int RunOnFullTmpfs(const std::string& base) {
  int fails = 0;
  auto expect = [&](bool ok, const std::string& what) {
    if (!ok) {
      std::fprintf(stderr, "FAILED: %s\n", what.c_str());
      ++fails;
    }
  };
  const std::string mnt = base + "/tmpfs";
  const std::string dev = base + "/dev";
  if (::unshare(CLONE_NEWNS) != 0 ||
      ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
      ::mkdir(mnt.c_str(), 0700) != 0 || ::mkdir(dev.c_str(), 0700) != 0 ||
      ::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=2m,mode=0700") != 0) {
    std::fprintf(stderr, "FAILED: setting up the tmpfs: %s\n", std::strerror(errno));
    return 1;
  }
  const std::string data = mnt + "/data";
  RealFileSystem fs;
  FakeVolumeBackend backend(dev, 64);
  FakeMounter mounter;
  VolumeManagerOptions opts;
  opts.node_id = "node-a";
  // Admit by the pool so that the disk, not the admission check, says no.
  opts.overcommit_ratio = 1000;
  auto open = [&](std::unique_ptr<RecordStore>* store, std::unique_ptr<VolumeManager>* m) {
    m->reset();
    auto s = RecordStore::Open(data, nullptr, &fs);
    if (!s.ok()) return s.status();
    *store = std::move(*s);
    *m = std::make_unique<VolumeManager>(opts, store->get(), &backend, &mounter);
    return (*m)->Load();
  };
  std::unique_ptr<RecordStore> store;
  std::unique_ptr<VolumeManager> m;
  if (absl::Status s = open(&store, &m); !s.ok()) {
    std::fprintf(stderr, "FAILED: open: %s\n", s.ToString().c_str());
    return 1;
  }
  auto keep = m->CreateVolume(CreateReq("keep", kMiB, BlockCap()));
  if (!keep.ok()) {
    std::fprintf(stderr, "FAILED: create keep: %s\n", keep.status().ToString().c_str());
    return 1;
  }
  const std::string keep_id = keep->volume().volume_id();
  const std::string keep_file = store->Abs(RecordStore::VolumeFileRel(keep_id));
  const std::string keep_data(64 * 1024, 'k');
  {
    int fd = ::open(keep_file.c_str(), O_WRONLY | O_CLOEXEC);
    expect(fd >= 0 && ::pwrite(fd, keep_data.data(), keep_data.size(), 0) ==
                          static_cast<ssize_t>(keep_data.size()),
           "writing keep's data");
    ::close(fd);
  }
  const std::map<std::string, std::string> before = DirContents(data);

  // Fill the filesystem.
  const std::string filler = mnt + "/filler";
  {
    int fd = ::open(filler.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    std::string chunk(4096, 'f');
    while (::write(fd, chunk.data(), chunk.size()) > 0) {
    }
    expect(errno == ENOSPC, absl::StrCat("filling the tmpfs ended with ", std::strerror(errno)));
    ::close(fd);
  }

  auto full = [&](const absl::Status& s, const char* what) {
    expect(absl::IsResourceExhausted(s),
           absl::StrCat(what, " on a full disk: want RESOURCE_EXHAUSTED, got ", s.ToString()));
    expect(absl::StrContains(s.message(), "No space left on device") &&
               absl::StrContains(s.message(), data),
           absl::StrCat(what, ": the error names neither the cause nor the path: ", s.ToString()));
  };
  full(m->CreateVolume(CreateReq("new", kMiB, BlockCap())).status(), "CreateVolume");
  csi::v1::NodeStageVolumeRequest stage;
  stage.set_volume_id(keep_id);
  stage.set_staging_target_path(base + "/stage");
  *stage.mutable_volume_capability() = BlockCap();
  full(m->NodeStageVolume(stage).status(), "NodeStageVolume (its record write)");

  // Nothing lost, nothing left behind, before and after a restart.
  expect(DirContents(data) == before, "the data dir changed");
  auto listed = m->ListVolumes({});
  expect(listed.ok() && listed->entries_size() == 1, "ListVolumes does not list just keep");
  if (absl::Status s = open(&store, &m); !s.ok()) {
    expect(false, absl::StrCat("restart on the full disk: ", s.ToString()));
  } else {
    auto rec = m->GetRecord(keep_id);
    expect(rec.ok() && rec->staged_path().empty() && rec->capacity_bytes() == kMiB,
           "keep's record did not load unchanged");
    expect(ReadRaw(keep_file).compare(0, keep_data.size(), keep_data) == 0, "keep's data changed");
  }

  // Room again: the same requests succeed.
  ::unlink(filler.c_str());
  auto made = m->CreateVolume(CreateReq("new", kMiB, BlockCap()));
  expect(made.ok(), absl::StrCat("CreateVolume with room again: ", made.status().ToString()));
  absl::Status staged = m->NodeStageVolume(stage).status();
  expect(staged.ok(), absl::StrCat("NodeStageVolume with room again: ", staged.ToString()));
  m.reset();
  store.reset();
  ::umount2(mnt.c_str(), MNT_DETACH);
  return fails;
}

TEST(FullTmpfs, CreateVolumeAndRecordWriteFailResourceExhaustedAndLoseNothing) {
  if (::geteuid() != 0) {
    GTEST_SKIP() << "needs root: mounts a 2 MiB tmpfs in a private mount namespace";
  }
  // Can this process make a mount namespace at all (a container may forbid it)?
  pid_t probe = ::fork();
  ASSERT_GE(probe, 0);
  if (probe == 0) _exit(::unshare(CLONE_NEWNS) == 0 ? 0 : errno);
  int status = 0;
  ASSERT_EQ(::waitpid(probe, &status, 0), probe);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    GTEST_SKIP() << "cannot unshare a mount namespace here: "
                 << std::strerror(WIFEXITED(status) ? WEXITSTATUS(status) : EINVAL);
  }
  ublk_test::TempDir dir;
  EXPECT_EXIT(std::exit(RunOnFullTmpfs(dir.path()) == 0 ? 0 : 1), ::testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace ublk_csi
