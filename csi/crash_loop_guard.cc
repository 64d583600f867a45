#include "csi/crash_loop_guard.h"

#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "glog/logging.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"

namespace ublk_csi {
namespace {

std::string PathIn(const std::string& data_dir) {
  return absl::StrCat(data_dir, "/", CrashLoopGuard::kFileName);
}

}  // namespace

struct CrashLoopGuard::Gauges {
  prometheus::Gauge* unfinished = nullptr;
  prometheus::Gauge* conservative = nullptr;
};

int CrashLoopGuard::ReadCount(const std::string& data_dir, int threshold) {
  const std::string path = PathIn(data_dir);
  std::ifstream in(path);
  if (!in) return 0;  // missing: no unfinished recovery
  std::string text;
  std::getline(in, text);
  int n = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &n) || n < 0) {
    LOG(WARNING) << path << ": not a count ('" << text
                 << "'); assuming the plugin is crash-looping";
    return threshold;
  }
  return n;
}

absl::StatusOr<std::unique_ptr<CrashLoopGuard>> CrashLoopGuard::Begin(
    const std::string& data_dir, int threshold, prometheus::Registry* registry, FileSystem* fs) {
  const int previous = ReadCount(data_dir, threshold);
  std::unique_ptr<CrashLoopGuard> g(new CrashLoopGuard(PathIn(data_dir), previous, threshold,
                                                       fs != nullptr ? *fs : DefaultFileSystem()));
  if (absl::Status s = g->Write(absl::StrCat(previous + 1, "\n")); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("crash-loop guard: ", s.message()));
  }
  g->gauges_ = std::make_shared<Gauges>();
  if (registry != nullptr) {
    g->gauges_->unfinished = &prometheus::BuildGauge()
                                  .Name("ublk_csi_unfinished_recoveries")
                                  .Help(
                                      "Recoveries cut short (the plugin died before every "
                                      "volume had an outcome) before this start")
                                  .Register(*registry)
                                  .Add({});
    g->gauges_->conservative = &prometheus::BuildGauge()
                                    .Name("ublk_csi_conservative_recovery")
                                    .Help(
                                        "1 while this start recovers with the most "
                                        "conservative settings (one volume at a time, no "
                                        "buffer pools) because earlier recoveries were cut "
                                        "short")
                                    .Register(*registry)
                                    .Add({});
    g->gauges_->unfinished->Set(previous);
    g->gauges_->conservative->Set(g->conservative() ? 1 : 0);
  }
  if (g->conservative()) {
    LOG(WARNING) << "crash-loop guard: " << previous
                 << " recoveries were cut short before this start (" << g->path_
                 << "); recovering with the most conservative settings: one volume at a time, "
                    "no buffer pools (heap buffers) until recovery completes";
  } else if (previous > 0) {
    LOG(INFO) << "crash-loop guard: " << previous << " recovery cut short before this start";
  }
  return g;
}

absl::Status CrashLoopGuard::Complete() {
  if (completed_.exchange(true)) return absl::OkStatus();
  if (gauges_ != nullptr && gauges_->conservative != nullptr) gauges_->conservative->Set(0);
  if (conservative()) {
    LOG(INFO) << "crash-loop guard: recovery completed; back to the configured settings";
  }
  return Write("0\n");
}

absl::Status CrashLoopGuard::Write(const std::string& text) {
  // temp file, fsync, rename, fsync dir: the file holds the old or the new
  // text after a crash at any instant.
  return WriteFailure(fs_.WriteFileAtomically(path_, path_ + ".tmp", text));
}

absl::StatusOr<void*> HeapOnlyMemorySource::Map(size_t len) {
  if (heap_only_.load()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("buffer pool of ", len,
                     " bytes refused: conservative recovery (crash-loop guard) "
                     "serves from heap buffers"));
  }
  return base_.Map(len);
}

}  // namespace ublk_csi
