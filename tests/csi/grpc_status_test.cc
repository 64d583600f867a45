#include "csi/grpc_status.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace ublk_csi {
namespace {

struct CodePair {
  absl::StatusCode absl_code;
  grpc::StatusCode grpc_code;
  int wire_value;  // the canonical number a CSI client sees
};

const std::vector<CodePair>& AllCodes() {
  static const std::vector<CodePair> kCodes = {
      {absl::StatusCode::kCancelled, grpc::StatusCode::CANCELLED, 1},
      {absl::StatusCode::kUnknown, grpc::StatusCode::UNKNOWN, 2},
      {absl::StatusCode::kInvalidArgument, grpc::StatusCode::INVALID_ARGUMENT, 3},
      {absl::StatusCode::kDeadlineExceeded, grpc::StatusCode::DEADLINE_EXCEEDED, 4},
      {absl::StatusCode::kNotFound, grpc::StatusCode::NOT_FOUND, 5},
      {absl::StatusCode::kAlreadyExists, grpc::StatusCode::ALREADY_EXISTS, 6},
      {absl::StatusCode::kPermissionDenied, grpc::StatusCode::PERMISSION_DENIED, 7},
      {absl::StatusCode::kResourceExhausted, grpc::StatusCode::RESOURCE_EXHAUSTED, 8},
      {absl::StatusCode::kFailedPrecondition, grpc::StatusCode::FAILED_PRECONDITION, 9},
      {absl::StatusCode::kAborted, grpc::StatusCode::ABORTED, 10},
      {absl::StatusCode::kOutOfRange, grpc::StatusCode::OUT_OF_RANGE, 11},
      {absl::StatusCode::kUnimplemented, grpc::StatusCode::UNIMPLEMENTED, 12},
      {absl::StatusCode::kInternal, grpc::StatusCode::INTERNAL, 13},
      {absl::StatusCode::kUnavailable, grpc::StatusCode::UNAVAILABLE, 14},
      {absl::StatusCode::kDataLoss, grpc::StatusCode::DATA_LOSS, 15},
      {absl::StatusCode::kUnauthenticated, grpc::StatusCode::UNAUTHENTICATED, 16},
  };
  return kCodes;
}

TEST(GrpcStatusTest, OkMapsToOkBothWays) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
}

TEST(GrpcStatusTest, EveryCodeMapsToSameMeaningAndWireNumber) {
  for (const CodePair& c : AllCodes()) {
    const std::string msg = "volume v1: code " + std::to_string(c.wire_value);
    grpc::Status g = ToGrpcStatus(absl::Status(c.absl_code, msg));
    EXPECT_EQ(g.error_code(), c.grpc_code) << msg;
    EXPECT_EQ(static_cast<int>(g.error_code()), c.wire_value) << msg;
    EXPECT_EQ(g.error_message(), msg);
    EXPECT_TRUE(g.error_details().empty());
  }
}

TEST(GrpcStatusTest, EveryGrpcCodeMapsBack) {
  for (const CodePair& c : AllCodes()) {
    const std::string msg = "from server: " + std::to_string(c.wire_value);
    absl::Status s = FromGrpcStatus(grpc::Status(c.grpc_code, msg));
    EXPECT_EQ(s.code(), c.absl_code) << msg;
    EXPECT_EQ(s.message(), msg);
  }
}

TEST(GrpcStatusTest, RoundTripPreservesCodeAndMessage) {
  for (const CodePair& c : AllCodes()) {
    absl::Status original(c.absl_code, "backing file /data/v1.img: EIO\n\twith \xc3\xa9");
    EXPECT_EQ(FromGrpcStatus(ToGrpcStatus(original)), original);
  }
}

TEST(GrpcStatusTest, EmptyMessageStaysEmptyButNotOk) {
  grpc::Status g = ToGrpcStatus(absl::Status(absl::StatusCode::kNotFound, ""));
  EXPECT_EQ(g.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(g.error_message(), "");
  absl::Status s = FromGrpcStatus(grpc::Status(grpc::StatusCode::ABORTED, ""));
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted);
  EXPECT_FALSE(s.ok());
}

TEST(GrpcStatusTest, NonCanonicalCodesBecomeUnknownKeepingMessage) {
  absl::Status odd(static_cast<absl::StatusCode>(77), "odd absl code");
  grpc::Status g = ToGrpcStatus(odd);
  EXPECT_EQ(g.error_code(), grpc::StatusCode::UNKNOWN);
  EXPECT_EQ(g.error_message(), "odd absl code");

  // grpc::StatusCode has no fixed underlying type, so only values up to 31
  // are representable; 20 is one that no canonical code uses.
  absl::Status s = FromGrpcStatus(grpc::Status(static_cast<grpc::StatusCode>(20), "odd grpc code"));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnknown);
  EXPECT_EQ(s.message(), "odd grpc code");
}

TEST(GrpcStatusTest, PayloadsAreNotSentOnTheWire) {
  absl::Status s = absl::InternalError("mkfs failed");
  s.SetPayload("type.example/x", absl::Cord("secret-ish detail"));
  grpc::Status g = ToGrpcStatus(s);
  EXPECT_EQ(g.error_message(), "mkfs failed");
  EXPECT_TRUE(g.error_details().empty());
}

}  // namespace
}  // namespace ublk_csi
