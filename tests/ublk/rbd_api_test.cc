// Ceph's libraries loaded on first use (ublk/rbd_api.h): the table fills from
// the installed librbd, a missing or wrong library is a clear error that is
// not cached (PluginBinaryTest checks the binaries do not link Ceph).
#include "ublk/rbd_api.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace {

using ::testing::HasSubstr;

TEST(RbdApiTest, LoadsEveryFunctionFromTheInstalledLibrbdOnceAndCachesIt) {
  absl::StatusOr<const ublk::RbdApi*> api = ublk::LoadRbdApi();
  ASSERT_TRUE(api.ok()) << api.status();
  std::vector<std::string> null_members;
#define UBLK_RBD_API_CHECK(fn) \
  if ((*api)->fn == nullptr) null_members.push_back(#fn);
  UBLK_RBD_API_FUNCTIONS(UBLK_RBD_API_CHECK)
#undef UBLK_RBD_API_CHECK
  EXPECT_THAT(null_members, ::testing::IsEmpty());
  // The cached table: the same object, usable (librbd's own version call is
  // not in the table; an image-options round trip is, and needs no cluster).
  absl::StatusOr<const ublk::RbdApi*> again = ublk::LoadRbdApi();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *api);
  rbd_image_options_t opts;
  (*api)->rbd_image_options_create(&opts);
  EXPECT_EQ((*api)->rbd_image_options_set_uint64(opts, RBD_IMAGE_OPTION_ORDER, 22), 0);
  (*api)->rbd_image_options_destroy(opts);
}

TEST(RbdApiTest, AMissingLibraryIsFailedPreconditionNamingWhatToInstall) {
  absl::StatusOr<ublk::RbdApi> api = ublk::LoadRbdApiFrom("libublk-csi-test-no-such-rbd.so.1");
  ASSERT_FALSE(api.ok());
  EXPECT_EQ(api.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(api.status().message(), HasSubstr("libublk-csi-test-no-such-rbd.so.1"));
  EXPECT_THAT(api.status().message(), HasSubstr("librbd1"));
}

TEST(RbdApiTest, ALibraryWithoutTheFunctionsNamesTheFirstMissingOne) {
  // zlib: a real shared library, none of Ceph's symbols.
  absl::StatusOr<ublk::RbdApi> api = ublk::LoadRbdApiFrom("libz.so.1");
  ASSERT_FALSE(api.ok());
  EXPECT_EQ(api.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(api.status().message(), HasSubstr("symbol rados_create2 not found"));
}

}  // namespace
