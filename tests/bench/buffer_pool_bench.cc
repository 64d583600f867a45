// AcquireIoBuffer + release on the pool path and on the heap path (the pool's
// mapping forced to fail, as on a degraded worker), with and without touching
// every page of the buffer. Prints ns per acquisition and heap/pool ratios
// measured in the same process.
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "benchmark/benchmark.h"
#include "prometheus/registry.h"
#include "ublk/buffer_pool.h"
#include "ublk/memory.h"
#include "ublk/testing/fake_clock.h"

namespace ublk {
namespace {

// Real heap, no mapping: a permanently degraded worker. No locks or counters,
// so the heap path is measured without test-double overhead.
class NoMapMemorySource final : public MemorySource {
 public:
  absl::StatusOr<void*> Map(size_t) override {
    return absl::ResourceExhaustedError("benchmark: pool disabled");
  }
  void Unmap(void*, size_t) override {}
  absl::StatusOr<void*> AllocateHeap(size_t len, size_t align) override {
    return real_.AllocateHeap(len, align);
  }
  void FreeHeap(void* block) override { real_.FreeHeap(block); }

 private:
  RealMemorySource real_;
};

void Run(benchmark::State& state, MemorySource& memory, bool touch, AcquireOutcome expected) {
  const size_t len = static_cast<size_t>(state.range(0));
  FakeClock clock;
  prometheus::Registry registry;
  BufferPoolMetrics metrics(registry);
  BufferPoolOptions options;                // defaults: 32 x 128 KiB
  options.retry_interval = absl::Hours(1);  // no map retries inside the loop
  BufferPool pool(options, memory, clock, &metrics, 0);
  pool.SetSlotReleasedCallback([] {});  // the engine always sets one
  if (pool.AcquireIoBuffer(len).outcome != expected) {
    state.SkipWithError("unexpected acquire outcome");
    return;
  }
  for (auto _ : state) {
    AcquireResult r = pool.AcquireIoBuffer(len);
    if (touch) {
      auto* bytes = static_cast<volatile uint8_t*>(r.buffer.data());
      for (size_t off = 0; off < len; off += 4096) bytes[off] = 1;
    }
    benchmark::DoNotOptimize(r.buffer.data());
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_Pool(benchmark::State& state) {
  RealMemorySource memory;
  Run(state, memory, /*touch=*/false, AcquireOutcome::kPooled);
}
void BM_Heap(benchmark::State& state) {
  NoMapMemorySource memory;
  Run(state, memory, /*touch=*/false, AcquireOutcome::kHeap);
}
void BM_PoolTouch(benchmark::State& state) {
  RealMemorySource memory;
  Run(state, memory, /*touch=*/true, AcquireOutcome::kPooled);
}
void BM_HeapTouch(benchmark::State& state) {
  NoMapMemorySource memory;
  Run(state, memory, /*touch=*/true, AcquireOutcome::kHeap);
}

BENCHMARK(BM_Pool)->Arg(4096)->Arg(128 * 1024);
BENCHMARK(BM_Heap)->Arg(4096)->Arg(128 * 1024);
BENCHMARK(BM_PoolTouch)->Arg(4096)->Arg(128 * 1024);
BENCHMARK(BM_HeapTouch)->Arg(4096)->Arg(128 * 1024);

// Console output plus a record of ns/iteration per benchmark name.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    // One number per benchmark: the single run, or the median of repetitions.
    for (const Run& run : runs) {
      if (run.error_occurred) continue;
      const bool median = run.run_type == Run::RT_Aggregate && run.aggregate_name == "median";
      if (run.run_type == Run::RT_Iteration || median) {
        ns_[run.run_name.str()] = {run.GetAdjustedRealTime(), run.GetAdjustedCPUTime()};
      }
    }
    ConsoleReporter::ReportRuns(runs);
  }

  void PrintRatios() const {
    // CPU time is the ratio's basis: on a shared machine wall time also
    // counts other processes' turns on the CPU.
    std::printf("\nns (CPU) per AcquireIoBuffer+release, heap path / pool path:\n");
    for (const char* kind : {"", "Touch"}) {
      for (const char* arg : {"4096", "131072"}) {
        const std::string pool = std::string("BM_Pool") + kind + "/" + arg;
        const std::string heap = std::string("BM_Heap") + kind + "/" + arg;
        auto p = ns_.find(pool);
        auto h = ns_.find(heap);
        if (p == ns_.end() || h == ns_.end() || p->second.cpu <= 0) continue;
        std::printf(
            "  %-16s pool %8.1f ns  heap %9.1f ns  ratio %7.2fx"
            "  (wall: %.1f / %.1f ns)\n",
            (std::string(kind[0] ? "touch " : "") + arg + " B").c_str(), p->second.cpu,
            h->second.cpu, h->second.cpu / p->second.cpu, p->second.real, h->second.real);
      }
    }
  }

 private:
  struct Times {
    double real;
    double cpu;
  };
  std::map<std::string, Times> ns_;
};

}  // namespace
}  // namespace ublk

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  ublk::RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  reporter.PrintRatios();
  benchmark::Shutdown();
  return 0;
}
