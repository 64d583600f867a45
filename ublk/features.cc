#include "ublk/features.h"

#include <sys/utsname.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "glog/logging.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"

namespace ublk {
namespace {

std::string UnameRelease() {
  utsname u{};
  if (uname(&u) != 0) return "unknown";
  return u.release;
}

}  // namespace

std::string FeaturesHex(uint64_t features) { return absl::StrCat("0x", absl::Hex(features)); }

absl::StatusOr<std::optional<CopyMode>> ParseCopyModeFlag(absl::string_view text) {
  if (text == "auto") return std::optional<CopyMode>();
  // Also the dashed spelling (user-copy): the Helm chart's examples use it.
  // Everything the plugin prints (logs, metrics, volume stats) uses
  // CopyModeName's.
  const std::string underscored = absl::StrReplaceAll(text, {{"-", "_"}});
  for (CopyMode m : {CopyMode::kZeroCopy, CopyMode::kUserCopy, CopyMode::kGetData}) {
    if (underscored == CopyModeName(m)) return std::optional<CopyMode>(m);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--copy_mode=", text, ": expected auto, zero_copy, user_copy or get_data"));
}

absl::StatusOr<KernelEmulation> ParseKernelEmulation(absl::string_view text) {
  if (text.empty() || text == "none") return KernelEmulation::kNone;
  if (text == "6.1") return KernelEmulation::kLinux61;
  return absl::InvalidArgumentError(
      absl::StrCat("--emulate_kernel=", text, ": expected none or 6.1"));
}

absl::string_view KernelEmulationName(KernelEmulation emulation) {
  return emulation == KernelEmulation::kLinux61 ? "6.1" : "none";
}

absl::StatusOr<KernelFeatures> DetectFeatures(const ControlDeviceFactory& open_control,
                                              const FeatureOptions& options) {
  KernelFeatures kf;
  kf.kernel_release = options.kernel_release.empty() ? UnameRelease() : options.kernel_release;
  kf.emulation = options.emulate_kernel;
  const bool emulate61 = options.emulate_kernel == KernelEmulation::kLinux61;
  if (emulate61) {
    if (options.force_encoding == CmdEncoding::kIoctl) {
      return absl::FailedPreconditionError(
          "encoding ioctl forced together with emulate_kernel 6.1, which has only legacy "
          "command numbers");
    }
    if (options.force_copy_mode.has_value() && *options.force_copy_mode != CopyMode::kGetData) {
      return absl::FailedPreconditionError(
          absl::StrCat("copy mode ", CopyModeName(*options.force_copy_mode),
                       " forced together with emulate_kernel 6.1, which offers only get_data"));
    }
  }

  // Under 6.1 emulation the control device is still opened (with the
  // command encoding 6.1 has), so a missing ublk_drv is reported the same way.
  auto control = open_control(emulate61 ? CmdEncoding::kLegacy : CmdEncoding::kIoctl);
  if (!control.ok()) return control.status();
  absl::StatusOr<uint64_t> features =
      emulate61 ? absl::StatusOr<uint64_t>(absl::UnimplementedError("emulating Linux 6.1"))
                : (*control)->GetFeatures();
  if (features.ok()) {
    kf.has_get_features = true;
    kf.features = *features;
    // GET_FEATURES (6.5) is newer than ioctl encoding (6.4), so it implies it
    // even where the kernel does not list UBLK_F_CMD_IOCTL_ENCODE.
    kf.encoding = CmdEncoding::kIoctl;
  } else {
    VLOG(1) << "GET_FEATURES failed, assuming a 6.1-like ublk_drv: " << features.status();
    kf.features = kBaselineFeatures;
    kf.encoding = CmdEncoding::kLegacy;
  }
  kf.user_recovery = (kf.features & UBLK_F_USER_RECOVERY) != 0;
  kf.user_recovery_reissue = (kf.features & UBLK_F_USER_RECOVERY_REISSUE) != 0;
  kf.update_size = (kf.features & UBLK_F_UPDATE_SIZE) != 0;
  kf.auto_buf_reg = (kf.features & UBLK_F_AUTO_BUF_REG) != 0;
  kf.copy_mode = kf.auto_buf_reg                         ? CopyMode::kZeroCopy
                 : (kf.features & UBLK_F_USER_COPY) != 0 ? CopyMode::kUserCopy
                                                         : CopyMode::kGetData;

  if (options.force_encoding.has_value()) kf.encoding = *options.force_encoding;
  if (options.force_copy_mode.has_value()) {
    if (*options.force_copy_mode == CopyMode::kUserCopy && (kf.features & UBLK_F_USER_COPY) == 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("copy mode user_copy forced, but ublk_drv on kernel ", kf.kernel_release,
                       " does not offer UBLK_F_USER_COPY (features ", FeaturesHex(kf.features),
                       "; user copy needs Linux 6.5+)"));
    }
    if (*options.force_copy_mode == CopyMode::kZeroCopy && !kf.auto_buf_reg) {
      return absl::FailedPreconditionError(
          absl::StrCat("copy mode zero_copy forced, but ublk_drv on kernel ", kf.kernel_release,
                       " does not offer UBLK_F_AUTO_BUF_REG (features ", FeaturesHex(kf.features),
                       "; zero copy needs Linux 6.16+)"));
    }
    if (*options.force_copy_mode == CopyMode::kGetData &&
        (kf.features & UBLK_F_NEED_GET_DATA) == 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "copy mode get_data forced, but ublk_drv on kernel ", kf.kernel_release,
          " does not offer UBLK_F_NEED_GET_DATA (features ", FeaturesHex(kf.features), ")"));
    }
    kf.copy_mode = *options.force_copy_mode;
  }
  return kf;
}

void LogKernelFeatures(const KernelFeatures& kf) {
  LOG(INFO) << "ublk_drv on kernel " << kf.kernel_release << ": features "
            << FeaturesHex(kf.features)
            << (kf.emulation == KernelEmulation::kLinux61
                    ? " (emulating Linux 6.1: GET_FEATURES not asked, 6.1 baseline)"
                : kf.has_get_features ? " (GET_FEATURES)"
                                      : " (no GET_FEATURES: 6.1 baseline)")
            << ", using copy_mode=" << CopyModeName(kf.copy_mode)
            << " encoding=" << CmdEncodingName(kf.encoding) << " user_recovery=" << kf.user_recovery
            << " reissue=" << kf.user_recovery_reissue << " auto_buf_reg=" << kf.auto_buf_reg;
}

void RegisterKernelInfoMetric(const KernelFeatures& kf, prometheus::Registry& registry) {
  auto& family = prometheus::BuildGauge()
                     .Name("ublk_csi_kernel_info")
                     .Help("ublk kernel features and the data/command modes in use (always 1)")
                     .Register(registry);
  family
      .Add({{"copy_mode", std::string(CopyModeName(kf.copy_mode))},
            {"emulate_kernel", std::string(KernelEmulationName(kf.emulation))},
            {"encoding", std::string(CmdEncodingName(kf.encoding))},
            {"features", FeaturesHex(kf.features)},
            {"kernel", kf.kernel_release}})
      .Set(1);
}

}  // namespace ublk
