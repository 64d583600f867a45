#include "ublk/features.h"

#include <sys/utsname.h>

#include "absl/strings/str_cat.h"
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

absl::StatusOr<KernelFeatures> DetectFeatures(const ControlDeviceFactory& open_control,
                                              const FeatureOptions& options) {
  KernelFeatures kf;
  kf.kernel_release = options.kernel_release.empty() ? UnameRelease() : options.kernel_release;

  auto control = open_control(CmdEncoding::kIoctl);
  if (!control.ok()) return control.status();
  auto features = (*control)->GetFeatures();
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
  kf.copy_mode = (kf.features & UBLK_F_USER_COPY) != 0 ? CopyMode::kUserCopy : CopyMode::kGetData;

  if (options.force_encoding.has_value()) kf.encoding = *options.force_encoding;
  if (options.force_copy_mode.has_value()) {
    if (*options.force_copy_mode == CopyMode::kUserCopy && (kf.features & UBLK_F_USER_COPY) == 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "copy mode user_copy forced, but ublk_drv on kernel ", kf.kernel_release,
          " does not offer UBLK_F_USER_COPY (features ", FeaturesHex(kf.features),
          "; user copy needs Linux 6.5+)"));
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
            << (kf.has_get_features ? " (GET_FEATURES)" : " (no GET_FEATURES: 6.1 baseline)")
            << ", using copy_mode=" << CopyModeName(kf.copy_mode)
            << " encoding=" << CmdEncodingName(kf.encoding)
            << " user_recovery=" << kf.user_recovery
            << " reissue=" << kf.user_recovery_reissue;
}

void RegisterKernelInfoMetric(const KernelFeatures& kf, prometheus::Registry& registry) {
  auto& family = prometheus::BuildGauge()
                     .Name("ublk_csi_kernel_info")
                     .Help("ublk kernel features and the data/command modes in use (always 1)")
                     .Register(registry);
  family
      .Add({{"copy_mode", std::string(CopyModeName(kf.copy_mode))},
            {"encoding", std::string(CmdEncodingName(kf.encoding))},
            {"features", FeaturesHex(kf.features)},
            {"kernel", kf.kernel_release}})
      .Set(1);
}

}  // namespace ublk
