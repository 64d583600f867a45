#include "csi/driver.h"

#include "absl/strings/str_cat.h"
#include "csi/log_escape.h"
#include "ublk/status_macros.h"

namespace ublk_csi {

const char* DriverName(Driver driver) {
  return driver == Driver::kRbd ? kRbdPluginName : kPluginName;
}

absl::Status CheckDriverVolume(Driver driver, absl::string_view volume_id,
                               absl::string_view field) {
  if (driver != Driver::kRbd || volume_id.empty() || ParseRbdVolumeId(volume_id)) {
    return absl::OkStatus();
  }
  // NOT_FOUND, the code CSI gives a volume that does not exist: no volume
  // of this driver has this ID (a node-local one is another driver's).
  return absl::NotFoundError(absl::StrCat(
      field, " '", EscapeForLog(volume_id), "' is not an RBD volume: driver ", kRbdPluginName,
      " serves Ceph RBD volumes only (node-local volumes belong to ", kPluginName, ")"));
}

absl::Status CheckDriverParameters(Driver driver, const ParamMap& params, absl::string_view field) {
  if (driver != Driver::kRbd) return absl::OkStatus();
  ASSIGN_OR_RETURN(const bool rbd, SelectsRbd(params, field));
  if (rbd) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      field, ".", kParamBackend, " must be rbd: driver ", kRbdPluginName,
      " provisions Ceph RBD volumes only; node-local file volumes need a StorageClass with "
      "provisioner ",
      kPluginName));
}

}  // namespace ublk_csi
