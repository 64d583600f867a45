#include "csi/volume_backend.h"

namespace ublk_csi {

const char* ExportStateName(ExportState state) {
  switch (state) {
    case ExportState::kAbsent:
      return "absent";
    case ExportState::kRecovering:
      return "recovering";
    case ExportState::kLive:
      return "live";
    case ExportState::kDegraded:
      return "degraded";
    case ExportState::kFailed:
      return "failed";
  }
  return "unknown";
}

}  // namespace ublk_csi
