// Checks proto/csi.proto against facts taken from the upstream CSI spec
// v1.9.0 (container-storage-interface/spec csi.proto): field numbers and
// types, oneofs, maps, enum values, service methods, the csi_secret option,
// and one message's exact wire bytes. If any of these drift, unmodified
// Kubernetes sidecars stop understanding us.
#include <string>
#include <vector>

#include "csi.grpc.pb.h"
#include "csi.pb.h"
#include "google/protobuf/descriptor.h"
#include "gtest/gtest.h"
#include "records.pb.h"

namespace ublk_csi {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::DescriptorPool;
using google::protobuf::EnumDescriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::ServiceDescriptor;

const DescriptorPool* Pool() { return DescriptorPool::generated_pool(); }

enum class Card { kSingular, kRepeated, kMap };

struct FieldFact {
  const char* message;  // full name without the "csi.v1." prefix
  const char* field;
  int number;
  FieldDescriptor::Type type;
  Card card;
  const char* type_name;  // message/enum full name, or "" for scalars
  const char* oneof;      // containing oneof, or ""
};

constexpr auto kString = FieldDescriptor::TYPE_STRING;
constexpr auto kInt64 = FieldDescriptor::TYPE_INT64;
constexpr auto kInt32 = FieldDescriptor::TYPE_INT32;
constexpr auto kBool = FieldDescriptor::TYPE_BOOL;
constexpr auto kMsg = FieldDescriptor::TYPE_MESSAGE;
constexpr auto kEnum = FieldDescriptor::TYPE_ENUM;
constexpr Card kOne = Card::kSingular;
constexpr Card kRep = Card::kRepeated;
constexpr Card kMap = Card::kMap;

const std::vector<FieldFact>& Facts() {
  static const std::vector<FieldFact> kFacts = {
      // Identity.
      {"GetPluginInfoResponse", "name", 1, kString, kOne, "", ""},
      {"GetPluginInfoResponse", "vendor_version", 2, kString, kOne, "", ""},
      {"GetPluginInfoResponse", "manifest", 3, kMsg, kMap, "", ""},
      {"GetPluginCapabilitiesResponse", "capabilities", 1, kMsg, kRep, "csi.v1.PluginCapability",
       ""},
      {"PluginCapability", "service", 1, kMsg, kOne, "csi.v1.PluginCapability.Service", "type"},
      {"PluginCapability", "volume_expansion", 2, kMsg, kOne,
       "csi.v1.PluginCapability.VolumeExpansion", "type"},
      {"PluginCapability.Service", "type", 1, kEnum, kOne, "csi.v1.PluginCapability.Service.Type",
       ""},
      {"PluginCapability.VolumeExpansion", "type", 1, kEnum, kOne,
       "csi.v1.PluginCapability.VolumeExpansion.Type", ""},
      {"ProbeResponse", "ready", 1, kMsg, kOne, "google.protobuf.BoolValue", ""},
      // CreateVolume.
      {"CreateVolumeRequest", "name", 1, kString, kOne, "", ""},
      {"CreateVolumeRequest", "capacity_range", 2, kMsg, kOne, "csi.v1.CapacityRange", ""},
      {"CreateVolumeRequest", "volume_capabilities", 3, kMsg, kRep, "csi.v1.VolumeCapability", ""},
      {"CreateVolumeRequest", "parameters", 4, kMsg, kMap, "", ""},
      {"CreateVolumeRequest", "secrets", 5, kMsg, kMap, "", ""},
      {"CreateVolumeRequest", "volume_content_source", 6, kMsg, kOne, "csi.v1.VolumeContentSource",
       ""},
      {"CreateVolumeRequest", "accessibility_requirements", 7, kMsg, kOne,
       "csi.v1.TopologyRequirement", ""},
      {"CreateVolumeRequest", "mutable_parameters", 8, kMsg, kMap, "", ""},  // new in v1.9
      {"CreateVolumeResponse", "volume", 1, kMsg, kOne, "csi.v1.Volume", ""},
      {"VolumeContentSource", "snapshot", 1, kMsg, kOne,
       "csi.v1.VolumeContentSource.SnapshotSource", "type"},
      {"VolumeContentSource", "volume", 2, kMsg, kOne, "csi.v1.VolumeContentSource.VolumeSource",
       "type"},
      {"VolumeContentSource.SnapshotSource", "snapshot_id", 1, kString, kOne, "", ""},
      {"VolumeContentSource.VolumeSource", "volume_id", 1, kString, kOne, "", ""},
      {"CapacityRange", "required_bytes", 1, kInt64, kOne, "", ""},
      {"CapacityRange", "limit_bytes", 2, kInt64, kOne, "", ""},
      {"Volume", "capacity_bytes", 1, kInt64, kOne, "", ""},
      {"Volume", "volume_id", 2, kString, kOne, "", ""},
      {"Volume", "volume_context", 3, kMsg, kMap, "", ""},
      {"Volume", "content_source", 4, kMsg, kOne, "csi.v1.VolumeContentSource", ""},
      {"Volume", "accessible_topology", 5, kMsg, kRep, "csi.v1.Topology", ""},
      {"TopologyRequirement", "requisite", 1, kMsg, kRep, "csi.v1.Topology", ""},
      {"TopologyRequirement", "preferred", 2, kMsg, kRep, "csi.v1.Topology", ""},
      {"Topology", "segments", 1, kMsg, kMap, "", ""},
      // VolumeCapability and its oneof.
      {"VolumeCapability", "block", 1, kMsg, kOne, "csi.v1.VolumeCapability.BlockVolume",
       "access_type"},
      {"VolumeCapability", "mount", 2, kMsg, kOne, "csi.v1.VolumeCapability.MountVolume",
       "access_type"},
      {"VolumeCapability", "access_mode", 3, kMsg, kOne, "csi.v1.VolumeCapability.AccessMode", ""},
      {"VolumeCapability.MountVolume", "fs_type", 1, kString, kOne, "", ""},
      {"VolumeCapability.MountVolume", "mount_flags", 2, kString, kRep, "", ""},
      {"VolumeCapability.MountVolume", "volume_mount_group", 3, kString, kOne, "", ""},
      {"VolumeCapability.AccessMode", "mode", 1, kEnum, kOne,
       "csi.v1.VolumeCapability.AccessMode.Mode", ""},
      // Other controller calls.
      {"DeleteVolumeRequest", "volume_id", 1, kString, kOne, "", ""},
      {"DeleteVolumeRequest", "secrets", 2, kMsg, kMap, "", ""},
      {"ControllerPublishVolumeRequest", "volume_id", 1, kString, kOne, "", ""},
      {"ControllerPublishVolumeRequest", "node_id", 2, kString, kOne, "", ""},
      {"ControllerPublishVolumeRequest", "volume_capability", 3, kMsg, kOne,
       "csi.v1.VolumeCapability", ""},
      {"ControllerPublishVolumeRequest", "readonly", 4, kBool, kOne, "", ""},
      {"ControllerPublishVolumeRequest", "volume_context", 6, kMsg, kMap, "", ""},
      {"ControllerPublishVolumeResponse", "publish_context", 1, kMsg, kMap, "", ""},
      {"ValidateVolumeCapabilitiesResponse", "confirmed", 1, kMsg, kOne,
       "csi.v1.ValidateVolumeCapabilitiesResponse.Confirmed", ""},
      {"ValidateVolumeCapabilitiesResponse", "message", 2, kString, kOne, "", ""},
      {"ListVolumesRequest", "max_entries", 1, kInt32, kOne, "", ""},
      {"ListVolumesRequest", "starting_token", 2, kString, kOne, "", ""},
      {"ListVolumesResponse", "entries", 1, kMsg, kRep, "csi.v1.ListVolumesResponse.Entry", ""},
      {"ListVolumesResponse", "next_token", 2, kString, kOne, "", ""},
      {"ListVolumesResponse.Entry", "volume", 1, kMsg, kOne, "csi.v1.Volume", ""},
      {"ListVolumesResponse.Entry", "status", 2, kMsg, kOne,
       "csi.v1.ListVolumesResponse.VolumeStatus", ""},
      {"ListVolumesResponse.VolumeStatus", "published_node_ids", 1, kString, kRep, "", ""},
      {"ListVolumesResponse.VolumeStatus", "volume_condition", 2, kMsg, kOne,
       "csi.v1.VolumeCondition", ""},
      {"GetCapacityRequest", "volume_capabilities", 1, kMsg, kRep, "csi.v1.VolumeCapability", ""},
      {"GetCapacityRequest", "parameters", 2, kMsg, kMap, "", ""},
      {"GetCapacityRequest", "accessible_topology", 3, kMsg, kOne, "csi.v1.Topology", ""},
      {"GetCapacityResponse", "available_capacity", 1, kInt64, kOne, "", ""},
      {"GetCapacityResponse", "maximum_volume_size", 2, kMsg, kOne, "google.protobuf.Int64Value",
       ""},
      {"GetCapacityResponse", "minimum_volume_size", 3, kMsg, kOne, "google.protobuf.Int64Value",
       ""},
      {"ControllerGetCapabilitiesResponse", "capabilities", 1, kMsg, kRep,
       "csi.v1.ControllerServiceCapability", ""},
      {"ControllerServiceCapability", "rpc", 1, kMsg, kOne,
       "csi.v1.ControllerServiceCapability.RPC", "type"},
      {"ControllerServiceCapability.RPC", "type", 1, kEnum, kOne,
       "csi.v1.ControllerServiceCapability.RPC.Type", ""},
      {"ControllerExpandVolumeRequest", "volume_id", 1, kString, kOne, "", ""},
      {"ControllerExpandVolumeRequest", "capacity_range", 2, kMsg, kOne, "csi.v1.CapacityRange",
       ""},
      {"ControllerExpandVolumeRequest", "secrets", 3, kMsg, kMap, "", ""},
      {"ControllerExpandVolumeRequest", "volume_capability", 4, kMsg, kOne,
       "csi.v1.VolumeCapability", ""},
      {"ControllerExpandVolumeResponse", "capacity_bytes", 1, kInt64, kOne, "", ""},
      {"ControllerExpandVolumeResponse", "node_expansion_required", 2, kBool, kOne, "", ""},
      {"ControllerModifyVolumeRequest", "volume_id", 1, kString, kOne, "", ""},
      {"ControllerModifyVolumeRequest", "mutable_parameters", 3, kMsg, kMap, "", ""},
      // Snapshots.
      {"CreateSnapshotRequest", "source_volume_id", 1, kString, kOne, "", ""},
      {"CreateSnapshotRequest", "name", 2, kString, kOne, "", ""},
      {"CreateSnapshotRequest", "secrets", 3, kMsg, kMap, "", ""},
      {"CreateSnapshotRequest", "parameters", 4, kMsg, kMap, "", ""},
      {"CreateSnapshotResponse", "snapshot", 1, kMsg, kOne, "csi.v1.Snapshot", ""},
      {"Snapshot", "size_bytes", 1, kInt64, kOne, "", ""},
      {"Snapshot", "snapshot_id", 2, kString, kOne, "", ""},
      {"Snapshot", "source_volume_id", 3, kString, kOne, "", ""},
      {"Snapshot", "creation_time", 4, kMsg, kOne, "google.protobuf.Timestamp", ""},
      {"Snapshot", "ready_to_use", 5, kBool, kOne, "", ""},
      {"Snapshot", "group_snapshot_id", 6, kString, kOne, "", ""},
      {"ListSnapshotsRequest", "max_entries", 1, kInt32, kOne, "", ""},
      {"ListSnapshotsRequest", "starting_token", 2, kString, kOne, "", ""},
      {"ListSnapshotsRequest", "source_volume_id", 3, kString, kOne, "", ""},
      {"ListSnapshotsRequest", "snapshot_id", 4, kString, kOne, "", ""},
      {"ListSnapshotsResponse.Entry", "snapshot", 1, kMsg, kOne, "csi.v1.Snapshot", ""},
      // Node.
      {"NodeStageVolumeRequest", "volume_id", 1, kString, kOne, "", ""},
      {"NodeStageVolumeRequest", "publish_context", 2, kMsg, kMap, "", ""},
      {"NodeStageVolumeRequest", "staging_target_path", 3, kString, kOne, "", ""},
      {"NodeStageVolumeRequest", "volume_capability", 4, kMsg, kOne, "csi.v1.VolumeCapability", ""},
      {"NodeStageVolumeRequest", "secrets", 5, kMsg, kMap, "", ""},
      {"NodeStageVolumeRequest", "volume_context", 6, kMsg, kMap, "", ""},
      {"NodeUnstageVolumeRequest", "volume_id", 1, kString, kOne, "", ""},
      {"NodeUnstageVolumeRequest", "staging_target_path", 2, kString, kOne, "", ""},
      {"NodePublishVolumeRequest", "volume_id", 1, kString, kOne, "", ""},
      {"NodePublishVolumeRequest", "publish_context", 2, kMsg, kMap, "", ""},
      {"NodePublishVolumeRequest", "staging_target_path", 3, kString, kOne, "", ""},
      {"NodePublishVolumeRequest", "target_path", 4, kString, kOne, "", ""},
      {"NodePublishVolumeRequest", "volume_capability", 5, kMsg, kOne, "csi.v1.VolumeCapability",
       ""},
      {"NodePublishVolumeRequest", "readonly", 6, kBool, kOne, "", ""},
      {"NodePublishVolumeRequest", "secrets", 7, kMsg, kMap, "", ""},
      {"NodePublishVolumeRequest", "volume_context", 8, kMsg, kMap, "", ""},
      {"NodeUnpublishVolumeRequest", "volume_id", 1, kString, kOne, "", ""},
      {"NodeUnpublishVolumeRequest", "target_path", 2, kString, kOne, "", ""},
      {"NodeGetVolumeStatsRequest", "volume_id", 1, kString, kOne, "", ""},
      {"NodeGetVolumeStatsRequest", "volume_path", 2, kString, kOne, "", ""},
      {"NodeGetVolumeStatsRequest", "staging_target_path", 3, kString, kOne, "", ""},
      {"NodeGetVolumeStatsResponse", "usage", 1, kMsg, kRep, "csi.v1.VolumeUsage", ""},
      {"NodeGetVolumeStatsResponse", "volume_condition", 2, kMsg, kOne, "csi.v1.VolumeCondition",
       ""},
      {"VolumeUsage", "available", 1, kInt64, kOne, "", ""},
      {"VolumeUsage", "total", 2, kInt64, kOne, "", ""},
      {"VolumeUsage", "used", 3, kInt64, kOne, "", ""},
      {"VolumeUsage", "unit", 4, kEnum, kOne, "csi.v1.VolumeUsage.Unit", ""},
      {"VolumeCondition", "abnormal", 1, kBool, kOne, "", ""},
      {"VolumeCondition", "message", 2, kString, kOne, "", ""},
      {"NodeGetCapabilitiesResponse", "capabilities", 1, kMsg, kRep, "csi.v1.NodeServiceCapability",
       ""},
      {"NodeServiceCapability", "rpc", 1, kMsg, kOne, "csi.v1.NodeServiceCapability.RPC", "type"},
      {"NodeServiceCapability.RPC", "type", 1, kEnum, kOne, "csi.v1.NodeServiceCapability.RPC.Type",
       ""},
      {"NodeGetInfoResponse", "node_id", 1, kString, kOne, "", ""},
      {"NodeGetInfoResponse", "max_volumes_per_node", 2, kInt64, kOne, "", ""},
      {"NodeGetInfoResponse", "accessible_topology", 3, kMsg, kOne, "csi.v1.Topology", ""},
      {"NodeExpandVolumeRequest", "volume_id", 1, kString, kOne, "", ""},
      {"NodeExpandVolumeRequest", "volume_path", 2, kString, kOne, "", ""},
      {"NodeExpandVolumeRequest", "capacity_range", 3, kMsg, kOne, "csi.v1.CapacityRange", ""},
      {"NodeExpandVolumeRequest", "staging_target_path", 4, kString, kOne, "", ""},
      {"NodeExpandVolumeRequest", "volume_capability", 5, kMsg, kOne, "csi.v1.VolumeCapability",
       ""},
      {"NodeExpandVolumeRequest", "secrets", 6, kMsg, kMap, "", ""},
      {"NodeExpandVolumeResponse", "capacity_bytes", 1, kInt64, kOne, "", ""},
  };
  return kFacts;
}

TEST(CsiProtoTest, FieldsMatchUpstreamSpec) {
  for (const FieldFact& f : Facts()) {
    const std::string where = std::string(f.message) + "." + f.field;
    const Descriptor* msg = Pool()->FindMessageTypeByName(std::string("csi.v1.") + f.message);
    ASSERT_NE(msg, nullptr) << "missing message " << f.message;
    const FieldDescriptor* field = msg->FindFieldByName(f.field);
    ASSERT_NE(field, nullptr) << "missing field " << where;
    EXPECT_EQ(field->number(), f.number) << where;
    EXPECT_EQ(field->type(), f.type) << where;
    EXPECT_EQ(field->is_map(), f.card == Card::kMap) << where;
    EXPECT_EQ(field->is_repeated(), f.card != Card::kSingular) << where;
    if (f.card == Card::kMap) {
      // Every CSI map is map<string, string>.
      const Descriptor* entry = field->message_type();
      EXPECT_EQ(entry->map_key()->type(), kString) << where;
      EXPECT_EQ(entry->map_value()->type(), kString) << where;
    } else if (f.type == kMsg) {
      EXPECT_EQ(field->message_type()->full_name(), f.type_name) << where;
    } else if (f.type == kEnum) {
      EXPECT_EQ(field->enum_type()->full_name(), f.type_name) << where;
    }
    const auto* oneof = field->real_containing_oneof();
    EXPECT_EQ(oneof == nullptr ? std::string() : oneof->name(), f.oneof) << where;
  }
}

void ExpectEnum(const char* name, const std::vector<std::pair<const char*, int>>& values) {
  const EnumDescriptor* e = Pool()->FindEnumTypeByName(std::string("csi.v1.") + name);
  ASSERT_NE(e, nullptr) << name;
  EXPECT_EQ(e->value_count(), static_cast<int>(values.size())) << name;
  for (const auto& [value_name, number] : values) {
    const auto* v = e->FindValueByName(value_name);
    ASSERT_NE(v, nullptr) << name << "." << value_name;
    EXPECT_EQ(v->number(), number) << name << "." << value_name;
  }
}

TEST(CsiProtoTest, EnumValuesMatchUpstreamSpec) {
  ExpectEnum("PluginCapability.Service.Type", {{"UNKNOWN", 0},
                                               {"CONTROLLER_SERVICE", 1},
                                               {"VOLUME_ACCESSIBILITY_CONSTRAINTS", 2},
                                               {"GROUP_CONTROLLER_SERVICE", 3}});
  ExpectEnum("PluginCapability.VolumeExpansion.Type",
             {{"UNKNOWN", 0}, {"ONLINE", 1}, {"OFFLINE", 2}});
  ExpectEnum("VolumeCapability.AccessMode.Mode", {{"UNKNOWN", 0},
                                                  {"SINGLE_NODE_WRITER", 1},
                                                  {"SINGLE_NODE_READER_ONLY", 2},
                                                  {"MULTI_NODE_READER_ONLY", 3},
                                                  {"MULTI_NODE_SINGLE_WRITER", 4},
                                                  {"MULTI_NODE_MULTI_WRITER", 5},
                                                  {"SINGLE_NODE_SINGLE_WRITER", 6},
                                                  {"SINGLE_NODE_MULTI_WRITER", 7}});
  ExpectEnum("ControllerServiceCapability.RPC.Type", {{"UNKNOWN", 0},
                                                      {"CREATE_DELETE_VOLUME", 1},
                                                      {"PUBLISH_UNPUBLISH_VOLUME", 2},
                                                      {"LIST_VOLUMES", 3},
                                                      {"GET_CAPACITY", 4},
                                                      {"CREATE_DELETE_SNAPSHOT", 5},
                                                      {"LIST_SNAPSHOTS", 6},
                                                      {"CLONE_VOLUME", 7},
                                                      {"PUBLISH_READONLY", 8},
                                                      {"EXPAND_VOLUME", 9},
                                                      {"LIST_VOLUMES_PUBLISHED_NODES", 10},
                                                      {"VOLUME_CONDITION", 11},
                                                      {"GET_VOLUME", 12},
                                                      {"SINGLE_NODE_MULTI_WRITER", 13},
                                                      {"MODIFY_VOLUME", 14}});
  ExpectEnum("NodeServiceCapability.RPC.Type", {{"UNKNOWN", 0},
                                                {"STAGE_UNSTAGE_VOLUME", 1},
                                                {"GET_VOLUME_STATS", 2},
                                                {"EXPAND_VOLUME", 3},
                                                {"VOLUME_CONDITION", 4},
                                                {"SINGLE_NODE_MULTI_WRITER", 5},
                                                {"VOLUME_MOUNT_GROUP", 6}});
  ExpectEnum("VolumeUsage.Unit", {{"UNKNOWN", 0}, {"BYTES", 1}, {"INODES", 2}});
  ExpectEnum("GroupControllerServiceCapability.RPC.Type",
             {{"UNKNOWN", 0}, {"CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT", 1}});
}

void ExpectMethods(const char* service, const std::vector<const char*>& methods) {
  const ServiceDescriptor* s = Pool()->FindServiceByName(std::string("csi.v1.") + service);
  ASSERT_NE(s, nullptr) << service;
  EXPECT_EQ(s->method_count(), static_cast<int>(methods.size())) << service;
  for (const char* m : methods) {
    const auto* method = s->FindMethodByName(m);
    ASSERT_NE(method, nullptr) << service << "/" << m;
    // Upstream always pairs FooRequest with FooResponse, where Foo is the RPC name.
    EXPECT_EQ(method->input_type()->full_name(), std::string("csi.v1.") + m + "Request");
    EXPECT_EQ(method->output_type()->full_name(), std::string("csi.v1.") + m + "Response");
    EXPECT_FALSE(method->client_streaming() || method->server_streaming()) << m;
  }
}

TEST(CsiProtoTest, ServicesAndMethodsMatchUpstreamSpec) {
  ExpectMethods("Identity", {"GetPluginInfo", "GetPluginCapabilities", "Probe"});
  ExpectMethods(
      "Controller",
      {"CreateVolume", "DeleteVolume", "ControllerPublishVolume", "ControllerUnpublishVolume",
       "ValidateVolumeCapabilities", "ListVolumes", "GetCapacity", "ControllerGetCapabilities",
       "CreateSnapshot", "DeleteSnapshot", "ListSnapshots", "ControllerExpandVolume",
       "ControllerGetVolume", "ControllerModifyVolume"});
  ExpectMethods("Node",
                {"NodeStageVolume", "NodeUnstageVolume", "NodePublishVolume", "NodeUnpublishVolume",
                 "NodeGetVolumeStats", "NodeExpandVolume", "NodeGetCapabilities", "NodeGetInfo"});
  ExpectMethods("GroupController", {"GroupControllerGetCapabilities", "CreateVolumeGroupSnapshot",
                                    "DeleteVolumeGroupSnapshot", "GetVolumeGroupSnapshot"});
  // The HTTP/2 path a sidecar dials is derived from these names.
  EXPECT_STREQ(csi::v1::Identity::service_full_name(), "csi.v1.Identity");
  EXPECT_STREQ(csi::v1::Node::service_full_name(), "csi.v1.Node");
}

TEST(CsiProtoTest, OptionExtensionNumbersMatchUpstreamSpec) {
  const std::vector<std::pair<const char*, int>> kExtensions = {
      {"csi_secret", 1059},       {"alpha_field", 1060},   {"alpha_enum", 1060},
      {"alpha_enum_value", 1060}, {"alpha_message", 1060}, {"alpha_method", 1060},
      {"alpha_service", 1060}};
  for (const auto& [name, number] : kExtensions) {
    const FieldDescriptor* ext = Pool()->FindExtensionByName(std::string("csi.v1.") + name);
    ASSERT_NE(ext, nullptr) << name;
    EXPECT_EQ(ext->number(), number) << name;
    EXPECT_EQ(ext->type(), kBool) << name;
  }
}

TEST(CsiProtoTest, ExactlyTheSecretsFieldsCarryCsiSecret) {
  // Walk every message: a field is marked csi_secret iff it is named "secrets".
  // This catches both a missing mark and a stray one.
  const google::protobuf::FileDescriptor* file = csi::v1::CreateVolumeRequest::descriptor()->file();
  int secrets_seen = 0;
  std::vector<const Descriptor*> todo;
  for (int i = 0; i < file->message_type_count(); ++i) todo.push_back(file->message_type(i));
  while (!todo.empty()) {
    const Descriptor* msg = todo.back();
    todo.pop_back();
    for (int i = 0; i < msg->nested_type_count(); ++i) todo.push_back(msg->nested_type(i));
    for (int i = 0; i < msg->field_count(); ++i) {
      const FieldDescriptor* field = msg->field(i);
      const bool marked = field->options().GetExtension(csi::v1::csi_secret);
      EXPECT_EQ(marked, field->name() == "secrets") << field->full_name();
      if (marked) ++secrets_seen;
    }
  }
  // Upstream v1.9 has 16 secrets maps: 10 controller (incl. the v1.9
  // ControllerModifyVolume), 3 node, 3 group controller.
  EXPECT_EQ(secrets_seen, 16);
}

TEST(CsiProtoTest, AlphaMarkersArePresentWhereUpstreamHasThem) {
  const auto* svc = Pool()->FindServiceByName("csi.v1.Controller");
  ASSERT_NE(svc, nullptr);
  EXPECT_TRUE(svc->FindMethodByName("ControllerModifyVolume")
                  ->options()
                  .GetExtension(csi::v1::alpha_method));
  EXPECT_FALSE(
      svc->FindMethodByName("CreateVolume")->options().GetExtension(csi::v1::alpha_method));
  EXPECT_TRUE(csi::v1::CreateVolumeRequest::descriptor()
                  ->FindFieldByName("mutable_parameters")
                  ->options()
                  .GetExtension(csi::v1::alpha_field));
  EXPECT_TRUE(
      csi::v1::VolumeCondition::descriptor()->options().GetExtension(csi::v1::alpha_message));
}

// CreateVolumeRequest{name:"pv", capacity_range{required_bytes:1024},
// volume_capabilities[{mount{fs_type:"ext4"}, access_mode{mode:SINGLE_NODE_WRITER}}],
// secrets{"k":"v"}}, encoded by hand from the field numbers above.
constexpr char kCreateVolumeWire[] =
    "\x0a\x02pv"            // 1: name
    "\x12\x03\x08\x80\x08"  // 2: capacity_range{1: 1024}
    "\x1a\x0c"              // 3: volume_capabilities, 12 bytes
    "\x12\x06\x0a\x04"
    "ext4"                         //    2: mount{1: fs_type}
    "\x1a\x02\x08\x01"             //    3: access_mode{1: mode=1}
    "\x2a\x06\x0a\x01k\x12\x01v";  // 5: secrets entry{1: key, 2: value}

const std::string& KnownCreateVolumeBytes() {
  static const std::string kBytes(kCreateVolumeWire, sizeof(kCreateVolumeWire) - 1);
  return kBytes;
}

TEST(CsiProtoTest, CreateVolumeRequestWireBytes) {
  csi::v1::CreateVolumeRequest req;
  req.set_name("pv");
  req.mutable_capacity_range()->set_required_bytes(1024);
  auto* cap = req.add_volume_capabilities();
  cap->mutable_mount()->set_fs_type("ext4");
  cap->mutable_access_mode()->set_mode(csi::v1::VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
  (*req.mutable_secrets())["k"] = "v";

  std::string out;
  ASSERT_TRUE(req.SerializeToString(&out));
  EXPECT_EQ(out, KnownCreateVolumeBytes());

  csi::v1::CreateVolumeRequest parsed;
  ASSERT_TRUE(parsed.ParseFromString(KnownCreateVolumeBytes()));
  EXPECT_EQ(parsed.name(), "pv");
  EXPECT_EQ(parsed.capacity_range().required_bytes(), 1024);
  ASSERT_EQ(parsed.volume_capabilities_size(), 1);
  EXPECT_EQ(parsed.volume_capabilities(0).access_type_case(), csi::v1::VolumeCapability::kMount);
  EXPECT_EQ(parsed.volume_capabilities(0).mount().fs_type(), "ext4");
  EXPECT_EQ(parsed.volume_capabilities(0).access_mode().mode(),
            csi::v1::VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
  EXPECT_EQ(parsed.secrets().at("k"), "v");
}

TEST(CsiProtoTest, ProbeResponseWireBytes) {
  csi::v1::ProbeResponse resp;
  resp.mutable_ready()->set_value(true);
  EXPECT_EQ(resp.SerializeAsString(), std::string("\x0a\x02\x08\x01", 4));
  // An unset BoolValue must stay distinguishable from false on the wire.
  csi::v1::ProbeResponse not_ready;
  not_ready.mutable_ready()->set_value(false);
  EXPECT_EQ(not_ready.SerializeAsString(), std::string("\x0a\x00", 2));
  EXPECT_EQ(csi::v1::ProbeResponse().SerializeAsString(), "");
}

// records.proto is ours, not upstream's; these pin what a reboot relies on.
TEST(RecordsProtoTest, DevIdDistinguishesUnsetFromZero) {
  ublk_csi::records::VolumeRecord rec;
  EXPECT_FALSE(rec.has_dev_id());
  rec.set_dev_id(0);
  ublk_csi::records::VolumeRecord parsed;
  ASSERT_TRUE(parsed.ParseFromString(rec.SerializeAsString()));
  EXPECT_TRUE(parsed.has_dev_id());
  EXPECT_EQ(parsed.dev_id(), 0);
}

TEST(RecordsProtoTest, VolumeRecordRoundTrip) {
  ublk_csi::records::VolumeRecord rec;
  rec.set_schema_version(1);
  rec.set_volume_id("vol-1");
  rec.set_state(ublk_csi::records::VolumeRecord::READY);
  rec.set_access_type(ublk_csi::records::VolumeRecord::BLOCK);
  rec.set_capacity_bytes(int64_t{1} << 40);
  (*rec.mutable_parameters())["tier"] = "fast";
  rec.set_source_snapshot_id("snap-1");
  rec.set_backing_file("volumes/vol-1.img");
  rec.set_dev_id(-1);
  rec.add_published_paths("/var/lib/kubelet/pods/a/vol");
  ublk_csi::records::VolumeRecord parsed;
  ASSERT_TRUE(parsed.ParseFromString(rec.SerializeAsString()));
  EXPECT_EQ(parsed.SerializeAsString(), rec.SerializeAsString());
  EXPECT_EQ(parsed.content_source_case(), ublk_csi::records::VolumeRecord::kSourceSnapshotId);
  EXPECT_EQ(parsed.capacity_bytes(), int64_t{1} << 40);
  EXPECT_EQ(parsed.dev_id(), -1);
  EXPECT_EQ(parsed.parameters().at("tier"), "fast");
}

}  // namespace
}  // namespace ublk_csi
