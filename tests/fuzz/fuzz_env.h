// Shared by the fuzz targets that drive a VolumeManager: a private scratch
// directory per process (under /dev/shm when it exists: a fuzzer writes a
// record or a backing file per input), a sentinel file beside the data dir
// that no input may delete, and the fake backend and mounter.
#pragma once

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "csi/fake_mounter.h"
#include "csi/fake_volume_backend.h"
#include "csi/record_store.h"
#include "csi/volume_manager.h"
#include "glog/logging.h"

namespace ublk_fuzz {

// The scratch root, made once per process and removed at exit.
inline const std::string& Root() {
  static const std::string* root = [] {
    FLAGS_minloglevel = 3;  // the manager logs every rollback: keep the fuzzer quiet
    const char* base = ::access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    std::string tmpl = std::string(base) + "/ublk-csi-fuzz-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) {
      std::perror("mkdtemp");
      std::abort();
    }
    auto* r = new std::string(tmpl);
    std::atexit([] { std::filesystem::remove_all(Root()); });
    return r;
  }();
  return *root;
}

inline std::string Sentinel() { return Root() + "/outside-the-data-dir"; }

// One fresh data dir with a store, a fake backend and mounter and a loaded
// manager over them; the sentinel file beside it is (re)created.
struct Env {
  std::string data_dir = Root() + "/data";
  std::unique_ptr<ublk_csi::RecordStore> store;
  ublk_csi::FakeVolumeBackend backend{Root() + "/dev", 64};
  ublk_csi::FakeMounter mounter;
  std::unique_ptr<ublk_csi::VolumeManager> manager;

  // Before Load(): the caller may plant files under data_dir first.
  void Open() {
    std::error_code ec;
    std::filesystem::remove_all(data_dir, ec);
    std::filesystem::remove_all(Root() + "/dev", ec);
    std::filesystem::create_directories(Root() + "/dev");
    int fd = ::open(Sentinel().c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) ::close(fd);
    auto s = ublk_csi::RecordStore::Open(data_dir, nullptr);
    if (!s.ok()) {
      std::fprintf(stderr, "RecordStore::Open: %s\n", s.status().ToString().c_str());
      std::abort();
    }
    store = std::move(*s);
    ublk_csi::VolumeManagerOptions o;
    o.node_id = "fuzz-node";
    o.default_volume_bytes = int64_t{1} << 20;
    o.free_bytes = []() -> absl::StatusOr<int64_t> { return int64_t{1} << 40; };
    manager = std::make_unique<ublk_csi::VolumeManager>(o, store.get(), &backend, &mounter);
  }

  // Whatever the input did, it must not have reached outside the data dir.
  void CheckSentinel() const {
    if (::access(Sentinel().c_str(), F_OK) != 0) {
      std::fprintf(stderr, "the input deleted %s, outside the data dir\n", Sentinel().c_str());
      std::abort();
    }
  }
};

}  // namespace ublk_fuzz
