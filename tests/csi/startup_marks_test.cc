// StartupMarks: the start-up line main() logs once the plugin serves.
#include "csi/startup_marks.h"

#include "gtest/gtest.h"
#include "ublk/testing/fake_clock.h"

namespace ublk_csi {
namespace {

TEST(StartupMarksTest, EachStepIsTheTimeSinceThePreviousMark) {
  ublk::FakeClock clock;
  StartupMarks marks(&clock);
  marks.SetBeforeMain(absl::Milliseconds(350));
  clock.Advance(absl::Milliseconds(3));
  marks.Mark("flags");
  clock.Advance(absl::Milliseconds(40));
  marks.Mark("backend");
  marks.Mark("records loaded");
  clock.Advance(absl::Milliseconds(1200));
  marks.Mark("CSI server");
  EXPECT_EQ(marks.Summary(),
            "main reached 350ms after exec; flags 3ms, backend 40ms, records loaded 0ms, "
            "CSI server 1200ms; 1593ms after exec");
}

TEST(StartupMarksTest, WithoutTheProcessStartTheTotalIsFromMain) {
  ublk::FakeClock clock;
  StartupMarks marks(&clock);
  clock.Advance(absl::Milliseconds(7));
  marks.Mark("flags");
  EXPECT_EQ(marks.Summary(), "flags 7ms; 7ms after main");
}

TEST(StartupMarksTest, StartTicksAreFieldTwentyTwoCountedAfterTheCommandName) {
  // A command name with spaces and a ')' must not shift the fields.
  const std::string stat =
      "4242 (ublk csi) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 5 6 0 0 20 0 9 0 "
      "987654 123456789 2000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
  absl::StatusOr<uint64_t> ticks = ParseProcStatStartTicks(stat);
  ASSERT_TRUE(ticks.ok()) << ticks.status();
  EXPECT_EQ(*ticks, 987654u);
}

TEST(StartupMarksTest, AStatLineWithoutStartTimeIsAnError) {
  EXPECT_FALSE(ParseProcStatStartTicks("4242 ublk-csi S 1").ok());
  EXPECT_FALSE(ParseProcStatStartTicks("4242 (ublk-csi) S 1 2 3").ok());
  EXPECT_FALSE(
      ParseProcStatStartTicks("1 (a) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 notanumber 0").ok());
}

TEST(StartupMarksTest, ThisProcessStartedNotLongAgo) {
  absl::StatusOr<absl::Duration> d = TimeSinceProcessStart();
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_GE(*d, absl::ZeroDuration());
  EXPECT_LT(*d, absl::Minutes(10));  // a wrong field reads as days or years
}

}  // namespace
}  // namespace ublk_csi
