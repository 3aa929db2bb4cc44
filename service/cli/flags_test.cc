#include "service/cli/flags.h"

#include <cstdio>
#include <fstream>

#include "gtest/gtest.h"

namespace sinkserve::cli {
namespace {

FlagSet MakeFlags() {
  return FlagSet("test", "",
                 {{"model", FlagKind::kString, "", "model"},
                  {"threads", FlagKind::kInt, "2", "threads"},
                  {"temperature", FlagKind::kDouble, "0.8", "t"},
                  {"ids", FlagKind::kBool, "false", "ids"},
                  {"cache", FlagKind::kIntList, "256,512", "sizes"}});
}

TEST(FlagsTest, ParsesBothSpellingsAndDefaults) {
  FlagSet flags = MakeFlags();
  ASSERT_TRUE(flags.Parse({"--model", "m.gguf", "--threads=4", "--ids", "pos"}).ok());
  EXPECT_EQ(flags.GetString("model"), "m.gguf");
  EXPECT_EQ(flags.GetInt("threads"), 4);
  EXPECT_DOUBLE_EQ(flags.GetDouble("temperature"), 0.8);
  EXPECT_TRUE(flags.GetBool("ids"));
  EXPECT_EQ(flags.GetIntList("cache"), (std::vector<int64_t>{256, 512}));
  EXPECT_EQ(flags.positional(), std::vector<std::string>{"pos"});
  EXPECT_TRUE(flags.Has("model"));
  EXPECT_FALSE(flags.Has("temperature"));
}

TEST(FlagsTest, RejectsUnknownFlagsAndBadValues) {
  EXPECT_FALSE(MakeFlags().Parse({"--bogus", "1"}).ok());
  EXPECT_FALSE(MakeFlags().Parse({"--threads", "many"}).ok());
  EXPECT_FALSE(MakeFlags().Parse({"--temperature"}).ok());
  EXPECT_FALSE(MakeFlags().Parse({"-threads", "3"}).ok());
  EXPECT_FALSE(MakeFlags().Parse({"--cache", "1,x"}).ok());
  EXPECT_FALSE(MakeFlags().Parse({"--ids=maybe"}).ok());
}

TEST(FlagsTest, NegatedBoolAndFlagfile) {
  const std::string path = ::testing::TempDir() + "/flags.txt";
  {
    std::ofstream out(path);
    out << "# comment\n--threads=7\n\n--model=from_file.gguf\n";
  }
  FlagSet flags = MakeFlags();
  ASSERT_TRUE(flags.Parse({"--flagfile", path, "--noids", "--threads=9"}).ok());
  EXPECT_EQ(flags.GetString("model"), "from_file.gguf");
  EXPECT_EQ(flags.GetInt("threads"), 9);  // later flags win
  EXPECT_FALSE(flags.GetBool("ids"));
  EXPECT_FALSE(MakeFlags().Parse({"--flagfile=/nonexistent/flags"}).ok());
}

}  // namespace
}  // namespace sinkserve::cli
