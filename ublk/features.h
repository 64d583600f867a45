// What the running kernel's ublk_drv offers, and the modes the engine picks
// from it: command encoding and copy mode. Detected once at start (from
// GET_FEATURES where the kernel has it, else the 6.1 baseline), logged once,
// and exported as the gauge ublk_csi_kernel_info.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "ublk/kernel.h"

namespace prometheus {
class Registry;
}

namespace ublk {

// An older kernel to emulate on a newer one by masking features, so CI can
// exercise old-kernel paths on the kernels that ship ublk.
enum class KernelEmulation {
  kNone,
  // Linux 6.1: no GET_FEATURES is sent, legacy command numbers, the 6.1
  // baseline features, get-data copy mode.
  kLinux61,
};

// A --copy_mode flag: "auto" -> nullopt (detect), "zero_copy" | "user_copy"
// | "get_data" (or with dashes: "user-copy"); anything else InvalidArgument
// naming the accepted values.
absl::StatusOr<std::optional<CopyMode>> ParseCopyModeFlag(absl::string_view text);

// "" or "none" -> kNone, "6.1" -> kLinux61; anything else InvalidArgument
// naming the accepted values.
absl::StatusOr<KernelEmulation> ParseKernelEmulation(absl::string_view text);
absl::string_view KernelEmulationName(KernelEmulation emulation);  // "none" | "6.1"

struct KernelFeatures {
  uint64_t features = 0;  // GET_FEATURES mask, or the 6.1 baseline without it
  bool has_get_features = false;
  KernelEmulation emulation = KernelEmulation::kNone;
  CmdEncoding encoding = CmdEncoding::kLegacy;
  CopyMode copy_mode = CopyMode::kGetData;
  bool user_recovery = false;
  bool user_recovery_reissue = false;
  bool update_size = false;
  bool auto_buf_reg = false;  // UBLK_F_AUTO_BUF_REG (6.16+): zero copy possible
  std::string kernel_release;
};

// What 6.1 offers (it has no GET_FEATURES to say so).
inline constexpr uint64_t kBaselineFeatures = UBLK_F_URING_CMD_COMP_IN_TASK | UBLK_F_NEED_GET_DATA |
                                              UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE;

struct FeatureOptions {
  // Unset: detect. Set: use it (the real-kernel test forces the
  // combinations). Forcing a copy mode the kernel lacks (zero copy without
  // UBLK_F_AUTO_BUF_REG, user copy without UBLK_F_USER_COPY) is
  // FailedPrecondition naming the mode and the kernel's features.
  std::optional<CmdEncoding> force_encoding;
  std::optional<CopyMode> force_copy_mode;
  // kLinux61 behaves as if GET_FEATURES did not exist. Forcing ioctl
  // encoding or a copy mode other than get-data with it is
  // FailedPrecondition naming both.
  KernelEmulation emulate_kernel = KernelEmulation::kNone;
  // Empty: uname(2).
  std::string kernel_release;
};

using ControlDeviceFactory =
    std::function<absl::StatusOr<std::unique_ptr<ControlDevice>>(CmdEncoding)>;

// Opens a control device with ioctl encoding and asks GET_FEATURES; if the
// kernel rejects it, falls back to legacy commands and the 6.1 baseline.
// Copy mode: zero copy when UBLK_F_AUTO_BUF_REG is offered, else user copy
// when UBLK_F_USER_COPY is, else get-data.
// Errors: the factory's (e.g. no ublk_drv), a forced mode the kernel lacks.
absl::StatusOr<KernelFeatures> DetectFeatures(const ControlDeviceFactory& open_control,
                                              const FeatureOptions& options);

// "0x1fe"
std::string FeaturesHex(uint64_t features);
// Logs the choice (INFO) once per call.
void LogKernelFeatures(const KernelFeatures& features);
// Registers ublk_csi_kernel_info{copy_mode,emulate_kernel,encoding,features,kernel} = 1.
void RegisterKernelInfoMetric(const KernelFeatures& features, prometheus::Registry& registry);

}  // namespace ublk
