// The two CSI drivers one ublk-csi binary serves, and which volumes each one
// takes. ublk.csi.io is the node-local driver (per-node provisioners,
// WaitForFirstConsumer); rbd.ublk.csi.io serves Ceph RBD volumes, created by
// a central controller Deployment, so that it never acts on node-local PVCs.
// Pure functions, no state.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "csi/rbd_params.h"

namespace ublk_csi {

inline constexpr char kPluginName[] = "ublk.csi.io";
inline constexpr char kRbdPluginName[] = "rbd.ublk.csi.io";

enum class Driver {
  // Node-local file volumes; also RBD volumes a StorageClass of this driver
  // asks for (backend: rbd), as before the second driver existed.
  kNodeLocal,
  // RBD volumes only: anything else is INVALID_ARGUMENT naming the driver.
  kRbd,
};

const char* DriverName(Driver driver);

// OK when `driver` serves the volume `volume_id` names (for kRbd: an RBD
// volume ID), else NOT_FOUND (CSI's code for a volume that does not exist;
// DeleteVolume turns it into OK); an empty ID is left to the manager's own
// validation.
absl::Status CheckDriverVolume(Driver driver, absl::string_view volume_id, absl::string_view field);
// OK when `driver` provisions volumes with these StorageClass parameters
// (for kRbd: backend rbd).
absl::Status CheckDriverParameters(Driver driver, const ParamMap& params, absl::string_view field);

}  // namespace ublk_csi
