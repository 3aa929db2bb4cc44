// `sinkserve tokenize`: prints the token ids of a text.
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/str_join.h"
#include "engine/gguf/gguf.h"
#include "engine/tokenizer/tokenizer.h"
#include "service/cli/commands.h"

namespace sinkserve::cli {

int RunTokenize(const std::vector<std::string>& args) {
  FlagSet flags("tokenize", "--model PATH (--text TEXT | --file PATH) [--bos]",
                {{"model", FlagKind::kString, "", "GGUF model or vocab file"},
                 {"text", FlagKind::kString, "", "text to tokenize"},
                 {"file", FlagKind::kString, "", "file whose whole content is tokenized"},
                 {"bos", FlagKind::kBool, "false", "prepend the BOS token"},
                 {"special", FlagKind::kBool, "false",
                  "parse control tokens written in the text"}});
  if (int rc = ParseOrExit(flags, args); rc >= 0) return rc;
  if (!flags.Has("model") || flags.Has("text") == flags.Has("file")) {
    std::cerr << "sinkserve tokenize: need --model and exactly one of --text, --file\n";
    return kExitUsage;
  }
  std::string text = flags.GetString("text");
  if (flags.Has("file")) {
    std::ifstream in(flags.GetString("file"), std::ios::binary);
    if (!in) {
      return Fail("tokenize", absl::NotFoundError("cannot read " + flags.GetString("file")));
    }
    std::ostringstream buffer;
    buffer << in.rdbuf();
    text = buffer.str();
  }
  auto file = engine::GgufFile::Open(flags.GetString("model"));
  if (!file.ok()) return Fail("tokenize", file.status());
  auto tokenizer = engine::Tokenizer::FromGguf(**file);
  if (!tokenizer.ok()) return Fail("tokenize", tokenizer.status());
  engine::EncodeOptions options;
  options.add_bos = flags.GetBool("bos");
  options.parse_special = flags.GetBool("special");
  auto ids = (*tokenizer)->Encode(text, options);
  if (!ids.ok()) return Fail("tokenize", ids.status());
  std::cout << absl::StrJoin(*ids, " ") << "\n";
  return kExitOk;
}

}  // namespace sinkserve::cli
