// kiln: one binary, git/ollama-style subcommands (kiln info, kiln run, ...).
#include <algorithm>
#include <charconv>
#include <cstdio>
#include <exception>
#include <stdexcept>
#include <string>

#include "cli/command.h"

namespace kiln::cli {

namespace {
std::vector<const Command*>& registry() {
  static std::vector<const Command*> list;
  return list;
}
}  // namespace

Command::Command(std::string_view n, std::string_view s, std::function<int(Args)> r)
    : name(n), summary(s), run(std::move(r)) {
  registry().push_back(this);
}

const std::vector<const Command*>& commands() {
  auto& list = registry();
  std::sort(list.begin(), list.end(), [](auto* a, auto* b) { return a->name < b->name; });
  return list;
}

bool is_help_flag(std::string_view arg) { return arg == "-h" || arg == "--help"; }

long parse_int_option(std::string_view option, std::string_view value, long min, long max) {
  long out = 0;
  auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), out);
  if (ec != std::errc() || ptr != value.data() + value.size() || out < min || out > max) {
    throw std::invalid_argument(std::string(option) + " expects an integer in [" +
                                std::to_string(min) + ", " + std::to_string(max) + "], got '" +
                                std::string(value) + "'");
  }
  return out;
}

std::string_view option_value(Args args, size_t& i) {
  if (i + 1 >= args.size()) {
    throw std::invalid_argument(std::string(args[i]) + " needs a value");
  }
  return args[++i];
}

}  // namespace kiln::cli

namespace {
void print_usage() {
  std::printf(
      "kiln: LLM inference for GGUF models\n\nusage: kiln <command> [options]\n\ncommands:\n");
  for (const auto* c : kiln::cli::commands()) {
    std::printf("  %-12s %.*s\n", std::string(c->name).c_str(), static_cast<int>(c->summary.size()),
                c->summary.data());
  }
  std::printf("\nRun 'kiln <command> --help' for the options of one command.\n");
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || kiln::cli::is_help_flag(argv[1])) {
    print_usage();
    return argc < 2 ? 1 : 0;
  }
  const std::string_view name = argv[1];
  if (name == "--version") {
    std::printf("kiln 0.1.0\n");
    return 0;
  }
  for (const auto* c : kiln::cli::commands()) {
    if (c->name == name) {
      try {
        return c->run(kiln::cli::Args(argv + 2, static_cast<size_t>(argc - 2)));
      } catch (const std::exception& e) {
        std::fprintf(stderr, "kiln %s: error: %s\n", argv[1], e.what());
        return 1;
      }
    }
  }
  std::fprintf(stderr, "kiln: unknown command '%s'\n\n", argv[1]);
  print_usage();
  return 1;
}
