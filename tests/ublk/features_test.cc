// Feature detection against 6.1-, 6.5- and 6.12-like fake kernels, forced
// modes, and the kernel-info metric.
#include "ublk/features.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#include "ublk/testing/fake_kernel.h"

namespace ublk {
namespace {

using ::testing::HasSubstr;

ControlDeviceFactory FactoryFor(FakeKernel& k, std::vector<CmdEncoding>* opened = nullptr) {
  return [&k, opened](CmdEncoding e) -> absl::StatusOr<std::unique_ptr<ControlDevice>> {
    if (opened != nullptr) opened->push_back(e);
    return k.OpenControl(e);
  };
}

FeatureOptions Opts() {
  FeatureOptions o;
  o.kernel_release = "test";
  return o;
}

TEST(FeaturesTest, Linux61FallsBackToLegacyAndGetData) {
  FakeKernel k(FakeKernelOptions::Linux61());
  auto f = DetectFeatures(FactoryFor(k), Opts());
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_FALSE(f->has_get_features);
  EXPECT_EQ(f->features, kBaselineFeatures);
  EXPECT_EQ(f->encoding, CmdEncoding::kLegacy);
  EXPECT_EQ(f->copy_mode, CopyMode::kGetData);
  EXPECT_TRUE(f->user_recovery);
  EXPECT_TRUE(f->user_recovery_reissue);
  EXPECT_FALSE(f->update_size);
  EXPECT_EQ(f->kernel_release, "test");
}

TEST(FeaturesTest, Linux65PicksIoctlAndUserCopy) {
  FakeKernel k(FakeKernelOptions::Linux65());
  auto f = DetectFeatures(FactoryFor(k), Opts());
  ASSERT_TRUE(f.ok());
  EXPECT_TRUE(f->has_get_features);
  EXPECT_EQ(f->features, kFake65Features);
  EXPECT_EQ(f->encoding, CmdEncoding::kIoctl);
  EXPECT_EQ(f->copy_mode, CopyMode::kUserCopy);
}

TEST(FeaturesTest, Linux612PicksIoctlAndUserCopy) {
  FakeKernel k(FakeKernelOptions::Linux612());
  auto f = DetectFeatures(FactoryFor(k), Opts());
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->features, 0x1feu);
  EXPECT_EQ(FeaturesHex(f->features), "0x1fe");
  EXPECT_EQ(f->encoding, CmdEncoding::kIoctl);
  EXPECT_EQ(f->copy_mode, CopyMode::kUserCopy);
  EXPECT_TRUE(f->user_recovery_reissue);
}

TEST(FeaturesTest, AllFourCombinationsCanBeForcedOn612) {
  FakeKernel k(FakeKernelOptions::Linux612());
  for (CmdEncoding e : {CmdEncoding::kIoctl, CmdEncoding::kLegacy}) {
    for (CopyMode m : {CopyMode::kUserCopy, CopyMode::kGetData}) {
      FeatureOptions o = Opts();
      o.force_encoding = e;
      o.force_copy_mode = m;
      auto f = DetectFeatures(FactoryFor(k), o);
      ASSERT_TRUE(f.ok());
      EXPECT_EQ(f->encoding, e);
      EXPECT_EQ(f->copy_mode, m);
      // And the forced encoding works against the (fake) kernel.
      auto info = k.OpenControl(f->encoding)->AddDevice(DeviceInfo{});
      ASSERT_TRUE(info.ok());
      ASSERT_TRUE(k.OpenControl(f->encoding)->DeleteDevice(info->dev_id).ok());
    }
  }
}

TEST(FeaturesTest, ForcingUserCopyOn61IsFailedPrecondition) {
  FakeKernel k(FakeKernelOptions::Linux61());
  FeatureOptions o = Opts();
  o.force_copy_mode = CopyMode::kUserCopy;
  auto f = DetectFeatures(FactoryFor(k), o);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("UBLK_F_USER_COPY"));
}

TEST(FeaturesTest, NoUblkDrvErrorPassesThrough) {
  auto f = DetectFeatures(
      [](CmdEncoding) -> absl::StatusOr<std::unique_ptr<ControlDevice>> {
        return absl::FailedPreconditionError("ublk_drv is not loaded");
      },
      Opts());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("ublk_drv"));
}

TEST(FeaturesTest, KernelInfoMetric) {
  FakeKernel k(FakeKernelOptions::Linux612());
  auto f = DetectFeatures(FactoryFor(k), Opts());
  ASSERT_TRUE(f.ok());
  prometheus::Registry registry;
  RegisterKernelInfoMetric(*f, registry);
  const std::string text = prometheus::TextSerializer().Serialize(registry.Collect());
  EXPECT_THAT(text, HasSubstr("ublk_csi_kernel_info{"));
  EXPECT_THAT(text, HasSubstr("copy_mode=\"user_copy\""));
  EXPECT_THAT(text, HasSubstr("encoding=\"ioctl\""));
  EXPECT_THAT(text, HasSubstr("features=\"0x1fe\""));
  EXPECT_THAT(text, HasSubstr("} 1"));
}

TEST(FeaturesTest, ParseKernelEmulation) {
  EXPECT_EQ(*ParseKernelEmulation(""), KernelEmulation::kNone);
  EXPECT_EQ(*ParseKernelEmulation("none"), KernelEmulation::kNone);
  EXPECT_EQ(*ParseKernelEmulation("6.1"), KernelEmulation::kLinux61);
  auto bad = ParseKernelEmulation("6.2");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("--emulate_kernel=6.2"));
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("6.1"));
  EXPECT_EQ(KernelEmulationName(KernelEmulation::kLinux61), "6.1");
  EXPECT_EQ(KernelEmulationName(KernelEmulation::kNone), "none");
}

TEST(FeaturesTest, Emulating61On612SendsNoGetFeaturesAndUsesLegacyGetData) {
  FakeKernel k(FakeKernelOptions::Linux612());
  FeatureOptions o = Opts();
  o.emulate_kernel = KernelEmulation::kLinux61;
  std::vector<CmdEncoding> opened;
  auto f = DetectFeatures(FactoryFor(k, &opened), o);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(k.get_features_calls(), 0);
  EXPECT_THAT(opened, ::testing::ElementsAre(CmdEncoding::kLegacy));
  EXPECT_FALSE(f->has_get_features);
  EXPECT_EQ(f->emulation, KernelEmulation::kLinux61);
  EXPECT_EQ(f->features, kBaselineFeatures);
  EXPECT_EQ(f->encoding, CmdEncoding::kLegacy);
  EXPECT_EQ(f->copy_mode, CopyMode::kGetData);
  EXPECT_FALSE(f->update_size);
  EXPECT_TRUE(f->user_recovery_reissue);
  // Without emulation the same kernel is asked.
  auto plain = DetectFeatures(FactoryFor(k), Opts());
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(k.get_features_calls(), 1);
  EXPECT_EQ(plain->copy_mode, CopyMode::kUserCopy);
  // The emulated encoding really works against the kernel.
  auto control = k.OpenControl(f->encoding);
  DeviceInfo want;
  want.flags = UBLK_F_NEED_GET_DATA | UBLK_F_USER_RECOVERY;
  auto info = control->AddDevice(want);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_NE(info->flags & UBLK_F_NEED_GET_DATA, 0u);
  EXPECT_TRUE(control->DeleteDevice(info->dev_id).ok());
}

TEST(FeaturesTest, Emulating61WithForcedGetDataAndLegacyIsFine) {
  FakeKernel k(FakeKernelOptions::Linux612());
  FeatureOptions o = Opts();
  o.emulate_kernel = KernelEmulation::kLinux61;
  o.force_copy_mode = CopyMode::kGetData;
  o.force_encoding = CmdEncoding::kLegacy;
  auto f = DetectFeatures(FactoryFor(k), o);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->copy_mode, CopyMode::kGetData);
  EXPECT_EQ(f->encoding, CmdEncoding::kLegacy);
}

TEST(FeaturesTest, Emulating61WithForcedUserCopyIsFailedPreconditionNamingBoth) {
  FakeKernel k(FakeKernelOptions::Linux612());
  FeatureOptions o = Opts();
  o.emulate_kernel = KernelEmulation::kLinux61;
  o.force_copy_mode = CopyMode::kUserCopy;
  auto f = DetectFeatures(FactoryFor(k), o);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("user_copy"));
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("emulate_kernel 6.1"));
  EXPECT_EQ(k.get_features_calls(), 0);
}

TEST(FeaturesTest, Emulating61WithForcedIoctlIsFailedPreconditionNamingBoth) {
  FakeKernel k(FakeKernelOptions::Linux612());
  FeatureOptions o = Opts();
  o.emulate_kernel = KernelEmulation::kLinux61;
  o.force_encoding = CmdEncoding::kIoctl;
  auto f = DetectFeatures(FactoryFor(k), o);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("ioctl"));
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("emulate_kernel 6.1"));
}

TEST(FeaturesTest, KernelInfoMetricNamesTheEmulation) {
  FakeKernel k(FakeKernelOptions::Linux612());
  FeatureOptions o = Opts();
  o.emulate_kernel = KernelEmulation::kLinux61;
  auto f = DetectFeatures(FactoryFor(k), o);
  ASSERT_TRUE(f.ok());
  prometheus::Registry registry;
  RegisterKernelInfoMetric(*f, registry);
  const std::string text = prometheus::TextSerializer().Serialize(registry.Collect());
  EXPECT_THAT(text, HasSubstr("emulate_kernel=\"6.1\""));
  EXPECT_THAT(text, HasSubstr("copy_mode=\"get_data\""));
  EXPECT_THAT(text, HasSubstr("encoding=\"legacy\""));
}

TEST(FeaturesTest, Linux7PicksZeroCopy) {
  FakeKernel k(FakeKernelOptions::Linux7());
  auto f = DetectFeatures(FactoryFor(k), Opts());
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(FeaturesHex(f->features), "0x1fffff");
  EXPECT_TRUE(f->auto_buf_reg);
  EXPECT_EQ(f->copy_mode, CopyMode::kZeroCopy);
  EXPECT_EQ(f->encoding, CmdEncoding::kIoctl);
}

TEST(FeaturesTest, EveryModeCanBeForcedOn7) {
  FakeKernel k(FakeKernelOptions::Linux7());
  for (CopyMode m : {CopyMode::kZeroCopy, CopyMode::kUserCopy, CopyMode::kGetData}) {
    FeatureOptions o = Opts();
    o.force_copy_mode = m;
    auto f = DetectFeatures(FactoryFor(k), o);
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_EQ(f->copy_mode, m);
  }
}

TEST(FeaturesTest, ForcingZeroCopyWithoutAutoBufRegNamesModeAndFeatures) {
  FakeKernel k(FakeKernelOptions::Linux612());
  FeatureOptions o = Opts();
  o.force_copy_mode = CopyMode::kZeroCopy;
  auto f = DetectFeatures(FactoryFor(k), o);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kFailedPrecondition);
  const std::string msg(f.status().message());
  EXPECT_THAT(msg, HasSubstr("zero_copy"));
  EXPECT_THAT(msg, HasSubstr("UBLK_F_AUTO_BUF_REG"));
  EXPECT_THAT(msg, HasSubstr("0x1fe"));
  EXPECT_THAT(msg, HasSubstr("kernel test"));
}

TEST(FeaturesTest, Emulating61On7IsStillGetDataAndRefusesZeroCopy) {
  FakeKernel k(FakeKernelOptions::Linux7());
  FeatureOptions o = Opts();
  o.emulate_kernel = KernelEmulation::kLinux61;
  auto f = DetectFeatures(FactoryFor(k), o);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->copy_mode, CopyMode::kGetData);
  EXPECT_FALSE(f->auto_buf_reg);
  o.force_copy_mode = CopyMode::kZeroCopy;
  f = DetectFeatures(FactoryFor(k), o);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("zero_copy"));
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("emulate_kernel 6.1"));
}

TEST(FeaturesTest, ParseCopyModeFlag) {
  EXPECT_EQ(*ParseCopyModeFlag("auto"), std::nullopt);
  EXPECT_EQ(*ParseCopyModeFlag("zero_copy"), CopyMode::kZeroCopy);
  EXPECT_EQ(*ParseCopyModeFlag("user_copy"), CopyMode::kUserCopy);
  EXPECT_EQ(*ParseCopyModeFlag("get_data"), CopyMode::kGetData);
  EXPECT_EQ(*ParseCopyModeFlag("user-copy"), CopyMode::kUserCopy);  // the chart's spelling
  EXPECT_EQ(*ParseCopyModeFlag("zero-copy"), CopyMode::kZeroCopy);
  auto bad = ParseCopyModeFlag("zerocopy");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("--copy_mode=zerocopy"));
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("zero_copy"));
}

TEST(FeaturesTest, KernelInfoMetricShowsZeroCopy) {
  FakeKernel k(FakeKernelOptions::Linux7());
  auto f = DetectFeatures(FactoryFor(k), Opts());
  ASSERT_TRUE(f.ok());
  prometheus::Registry registry;
  RegisterKernelInfoMetric(*f, registry);
  const std::string text = prometheus::TextSerializer().Serialize(registry.Collect());
  EXPECT_THAT(text, HasSubstr("copy_mode=\"zero_copy\""));
  EXPECT_THAT(text, HasSubstr("emulate_kernel=\"none\""));
}

}  // namespace
}  // namespace ublk
