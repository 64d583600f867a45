#include "ublk/memory_budget.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "glog/logging.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"
#include "ublk/mutex.h"

namespace ublk {
namespace {

// cgroup v1 reports "no limit" as a page-rounded LLONG_MAX.
constexpr uint64_t kV1Unlimited = 1ull << 62;

std::optional<uint64_t> ParseBytes(absl::string_view text) {
  text = absl::StripAsciiWhitespace(text);
  uint64_t v = 0;
  if (!absl::SimpleAtoi(text, &v)) return std::nullopt;
  return v;
}

// "max" or a number; nullopt for "max", a missing file or junk.
std::optional<uint64_t> ReadLimitFile(const MemoryFiles& files, const std::string& path) {
  absl::StatusOr<std::string> text = files.Read(path);
  if (!text.ok()) return std::nullopt;
  std::optional<uint64_t> v = ParseBytes(*text);
  if (v.has_value() && *v >= kV1Unlimited) return std::nullopt;
  return v;
}

std::string Join(const std::string& root, const std::string& path) {
  if (path.empty() || path == "/") return root;
  return path.front() == '/' ? root + path : root + "/" + path;
}

// `path` and each of its ancestors up to "/".
std::vector<std::string> SelfAndAncestors(std::string path) {
  std::vector<std::string> out;
  while (!path.empty() && path != "/") {
    out.push_back(path);
    const size_t slash = path.rfind('/');
    path = slash == std::string::npos || slash == 0 ? "/" : path.substr(0, slash);
  }
  out.push_back("/");
  return out;
}

std::string Bytes(uint64_t b) { return absl::StrCat(b, " bytes (", b >> 20, " MiB)"); }

}  // namespace

absl::StatusOr<std::string> RealMemoryFiles::Read(const std::string& path) const {
  std::ifstream in(path);
  if (!in) {
    const int err = errno;
    return absl::Status(err == ENOENT ? absl::StatusCode::kNotFound : absl::ErrnoToStatusCode(err),
                        absl::StrCat("reading ", path));
  }
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

struct MemoryBudget::Series {
  prometheus::Gauge& budget;
  prometheus::Gauge& usage;
  prometheus::Gauge& headroom;
  prometheus::Gauge& buffers;
  prometheus::Counter& denials;
  prometheus::Counter& high_events;
  double denials_seen = 0;
  double high_seen = 0;
};

MemoryBudget::MemoryBudget(const MemoryBudgetOptions& options, const MemoryFiles& files,
                           prometheus::Registry* registry)
    : options_(options), files_(files) {
  if (registry == nullptr) return;
  auto gauge = [&](const char* name, const char* help) -> prometheus::Gauge& {
    return prometheus::BuildGauge().Name(name).Help(help).Register(*registry).Add({});
  };
  auto counter = [&](const char* name, const char* help) -> prometheus::Counter& {
    return prometheus::BuildCounter().Name(name).Help(help).Register(*registry).Add({});
  };
  series_ = std::make_unique<Series>(Series{
      gauge("ublk_csi_memory_budget_bytes",
            "Memory limit the plugin keeps under (cgroup memory.max/memory.high or "
            "--memory_limit); 0 = none found"),
      gauge("ublk_csi_memory_usage_bytes",
            "Memory use of the plugin's cgroup (or its RSS) at the last reading"),
      gauge("ublk_csi_memory_headroom_bytes",
            "Memory limit minus estimated use; buffers are admitted only while it stays "
            "above the configured margin"),
      gauge("ublk_csi_memory_buffer_bytes",
            "Bytes of buffer-pool chunks and heap I/O buffers charged to the budget"),
      counter("ublk_csi_memory_denials_total",
              "Buffer-pool growths and heap I/O buffers refused by the memory budget (the "
              "I/O waited instead)"),
      counter("ublk_csi_memory_high_events_total",
              "memory.high throttling events of the plugin's cgroup seen since start"),
  });
}

MemoryBudget::~MemoryBudget() = default;

int64_t MemoryBudget::headroom() const {
  const uint64_t limit = limit_.load(std::memory_order_relaxed);
  if (limit == 0) return INT64_MAX;
  const uint64_t used =
      other_.load(std::memory_order_relaxed) + charged_.load(std::memory_order_relaxed);
  return static_cast<int64_t>(limit) - static_cast<int64_t>(used);
}

bool MemoryBudget::TryCharge(uint64_t bytes) {
  const uint64_t limit = limit_.load(std::memory_order_relaxed);
  if (limit == 0) {
    charged_.fetch_add(bytes, std::memory_order_relaxed);
    return true;
  }
  const uint64_t reserve = other_.load(std::memory_order_relaxed) + options_.headroom;
  const uint64_t allowance = limit > reserve ? limit - reserve : 0;
  uint64_t cur = charged_.load(std::memory_order_relaxed);
  do {
    if (cur + bytes > allowance || cur + bytes < cur) {
      denials_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
  } while (!charged_.compare_exchange_weak(cur, cur + bytes, std::memory_order_relaxed));
  return true;
}

void MemoryBudget::Uncharge(uint64_t bytes) {
  uint64_t cur = charged_.load(std::memory_order_relaxed);
  uint64_t next;
  do {
    next = cur >= bytes ? cur - bytes : 0;
  } while (!charged_.compare_exchange_weak(cur, next, std::memory_order_relaxed));
}

MemoryBudget::Reading MemoryBudget::Read() const {
  Reading r;
  std::string v2_path, v1_path;
  bool v2 = false, v1 = false;
  if (absl::StatusOr<std::string> cg = files_.Read(options_.proc_self + "/cgroup"); cg.ok()) {
    for (absl::string_view line : absl::StrSplit(*cg, '\n', absl::SkipEmpty())) {
      std::vector<absl::string_view> f = absl::StrSplit(line, absl::MaxSplits(':', 2));
      if (f.size() != 3) continue;
      if (f[0] == "0" && f[1].empty()) {
        v2 = true;
        v2_path = std::string(f[2]);
      }
      for (absl::string_view c : absl::StrSplit(f[1], ',')) {
        if (c == "memory") {
          v1 = true;
          v1_path = std::string(f[2]);
        }
      }
    }
  }
  std::optional<uint64_t> limit;
  auto lower = [&](std::optional<uint64_t> v, const std::string& source) {
    if (v.has_value() && (!limit.has_value() || *v < *limit)) {
      limit = v;
      r.limit_source = source;
    }
  };
  if (v2) {
    for (const std::string& p : SelfAndAncestors(v2_path)) {
      const std::string dir = Join(options_.cgroup_root, p);
      lower(ReadLimitFile(files_, dir + "/memory.max"), dir + "/memory.max");
      lower(ReadLimitFile(files_, dir + "/memory.high"), dir + "/memory.high");
    }
    const std::string dir = Join(options_.cgroup_root, v2_path);
    if (auto cur = files_.Read(dir + "/memory.current"); cur.ok()) {
      r.usage = ParseBytes(*cur);
      r.usage_source = dir + "/memory.current";
      // Page cache on the file LRU lists, active or inactive, is reclaimed
      // (written back first if dirty) before the OOM killer runs: it is not
      // what the budget guards against. Otherwise cache (mkfs, the records,
      // the volumes' backing files, which the plugin writes through the page
      // cache and which are charged to its group) fills the group to its
      // limit and no buffer is ever admitted again: every I/O parks, and
      // parked I/O writes nothing that would make the kernel reclaim. In the
      // guest, fio rewriting one volume kept 12 MiB on active_file and the
      // plugin's I/O parked for good. tmpfs (shmem) pages sit on the anon
      // lists and stay counted: they cannot be reclaimed without swap.
      if (auto stat = files_.Read(dir + "/memory.stat"); stat.ok() && r.usage.has_value()) {
        for (absl::string_view line : absl::StrSplit(*stat, '\n', absl::SkipEmpty())) {
          const bool inactive = absl::ConsumePrefix(&line, "inactive_file ");
          if (!inactive && !absl::ConsumePrefix(&line, "active_file ")) continue;
          const std::optional<uint64_t> cache = ParseBytes(line);
          if (cache.has_value()) *r.usage -= std::min(*cache, *r.usage);
          r.usage_source += inactive ? " - inactive_file" : " - active_file";
        }
      }
    }
    if (auto ev = files_.Read(dir + "/memory.events"); ev.ok()) {
      for (absl::string_view line : absl::StrSplit(*ev, '\n', absl::SkipEmpty())) {
        if (absl::ConsumePrefix(&line, "high ")) r.high_events = ParseBytes(line);
      }
    }
  }
  if (!limit.has_value() && v1) {
    const std::string root = options_.cgroup_root + "/memory";
    for (const std::string& p : SelfAndAncestors(v1_path)) {
      const std::string dir = Join(root, p);
      lower(ReadLimitFile(files_, dir + "/memory.limit_in_bytes"), dir + "/memory.limit_in_bytes");
    }
    if (!r.usage.has_value()) {
      const std::string dir = Join(root, v1_path);
      if (auto cur = files_.Read(dir + "/memory.usage_in_bytes"); cur.ok()) {
        r.usage = ParseBytes(*cur);
        r.usage_source = dir + "/memory.usage_in_bytes";
      }
    }
  }
  if (options_.limit_override.has_value()) {
    limit = *options_.limit_override;
    r.limit_source = "--memory_limit";
  }
  if (!r.usage.has_value()) {
    if (auto statm = files_.Read(options_.proc_self + "/statm"); statm.ok()) {
      std::vector<absl::string_view> f = absl::StrSplit(*statm, ' ', absl::SkipEmpty());
      uint64_t pages = 0;
      if (f.size() >= 2 && absl::SimpleAtoi(f[1], &pages)) {
        r.usage = pages * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
        r.usage_source = "RSS (" + options_.proc_self + "/statm)";
      }
    }
  }
  r.limit = limit.value_or(0);
  return r;
}

absl::Status MemoryBudget::Refresh() {
  ublk::MutexLock lock(&refresh_mu_);
  const Reading r = Read();
  absl::Status status;
  const uint64_t old_limit = limit_.load(std::memory_order_relaxed);
  if (first_refresh_ || r.limit != old_limit || r.limit_source != limit_source_) {
    if (r.limit == 0) {
      LOG(INFO) << "memory budget: no memory limit found (cgroup or --memory_limit); buffer "
                   "memory is bounded by the pool options only";
    } else {
      LOG(INFO) << "memory budget: limit " << Bytes(r.limit) << " from " << r.limit_source
                << ", usage from " << (r.usage_source.empty() ? "nowhere" : r.usage_source)
                << "; buffers are admitted while " << Bytes(options_.headroom) << " stay free";
    }
  }
  first_refresh_ = false;
  limit_source_ = r.limit_source;
  if (r.usage.has_value()) {
    usage_error_logged_ = false;
    last_usage_ = *r.usage;
    const uint64_t charged = charged_.load(std::memory_order_relaxed);
    other_.store(*r.usage > charged ? *r.usage - charged : 0, std::memory_order_relaxed);
  } else {
    status = absl::UnavailableError(
        "memory budget: cannot read the memory usage (cgroup "
        "memory.current / memory.usage_in_bytes, /proc/self/statm)");
    if (!usage_error_logged_) {
      usage_error_logged_ = true;
      LOG(WARNING) << status.message() << "; keeping the last reading";
    }
  }
  limit_.store(r.limit, std::memory_order_relaxed);

  bool pressure = false;
  if (r.high_events.has_value()) {
    if (last_high_.has_value() && *r.high_events > *last_high_) {
      const uint64_t n = *r.high_events - *last_high_;
      high_events_seen_.fetch_add(n, std::memory_order_relaxed);
      pressure = true;
      LOG(WARNING) << "memory budget: memory.high throttled the plugin " << n
                   << " time(s) since the last reading; releasing idle buffer pools";
    }
    last_high_ = r.high_events;
  }
  if (r.limit != 0) {
    const int64_t room = headroom();
    const int64_t margin = static_cast<int64_t>(options_.headroom);
    if (!tight_.load(std::memory_order_relaxed) && room < margin) {
      tight_.store(true, std::memory_order_relaxed);
      pressure = true;
      LOG(WARNING) << "memory budget: headroom " << room << " bytes is below the margin of "
                   << margin << " (limit " << r.limit << ", usage " << last_usage_
                   << "); new buffers wait and idle buffer pools are released";
    } else if (tight_.load(std::memory_order_relaxed) && room >= margin + margin / 4) {
      tight_.store(false, std::memory_order_relaxed);
      LOG(INFO) << "memory budget: headroom " << room << " bytes is above the margin again";
    }
  } else if (tight_.exchange(false, std::memory_order_relaxed)) {
    LOG(INFO) << "memory budget: no limit any more";
  }
  if (pressure) pressure_epoch_.fetch_add(1, std::memory_order_relaxed);
  UpdateMetrics();
  return status;
}

void MemoryBudget::UpdateMetrics() {
  if (series_ == nullptr) return;
  Series& s = *series_;
  const uint64_t limit = limit_.load(std::memory_order_relaxed);
  s.budget.Set(static_cast<double>(limit));
  s.usage.Set(static_cast<double>(last_usage_));
  s.headroom.Set(limit == 0 ? 0 : static_cast<double>(headroom()));
  s.buffers.Set(static_cast<double>(charged_.load(std::memory_order_relaxed)));
  const double denials = static_cast<double>(denials_.load(std::memory_order_relaxed));
  if (denials > s.denials_seen) s.denials.Increment(denials - s.denials_seen);
  s.denials_seen = denials;
  const double high = static_cast<double>(high_events_seen_.load(std::memory_order_relaxed));
  if (high > s.high_seen) s.high_events.Increment(high - s.high_seen);
  s.high_seen = high;
}

}  // namespace ublk
