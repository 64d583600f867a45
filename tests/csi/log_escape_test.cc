#include "csi/log_escape.h"

#include "gtest/gtest.h"

namespace ublk_csi {
namespace {

TEST(EscapeForLogTest, ControlCharactersCannotSplitOrForgeLines) {
  EXPECT_EQ(EscapeForLog("a\nE0101 forged"), "a\\nE0101 forged");
  EXPECT_EQ(EscapeForLog(std::string("x\0y", 3)), "x\\x00y");
  EXPECT_EQ(EscapeForLog("\r\t\x1b[31m\x7f"), "\\r\\t\\x1b[31m\\x7f");
  EXPECT_EQ(EscapeForLog("nel\xc2\x85"
                         "end"),
            "nel\\u0085end");
  EXPECT_EQ(EscapeForLog("ls\xe2\x80\xa8ps\xe2\x80\xa9"), "ls\\u2028ps\\u2029");
}

TEST(EscapeForLogTest, PrintableTextAndUtf8AreKept) {
  EXPECT_EQ(EscapeForLog("pvc-1/vol_\"x\" caf\xc3\xa9 \xe6\x97\xa5"),
            "pvc-1/vol_\"x\" caf\xc3\xa9 \xe6\x97\xa5");
}

TEST(EscapeForLogTest, LongTextIsCutAtACharacterBoundaryAndSaysItsLength) {
  EXPECT_EQ(EscapeForLog(std::string(300, 'a'), 10), "aaaaaaaaaa...(300 bytes)");
  // A 2-byte character straddling the cut is dropped whole.
  std::string s = "abcdefghi\xc3\xa9xyz";
  EXPECT_EQ(EscapeForLog(s, 10), "abcdefghi...(14 bytes)");
  EXPECT_EQ(EscapeForLog("short", 10), "short");
}

}  // namespace
}  // namespace ublk_csi
