#include "cli/option_parser.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <string>

namespace kiln::cli {

void OptionParser::flag(std::vector<std::string_view> names, bool& target) {
  options_.push_back({std::move(names), false, [&target](auto, auto) { target = true; }});
}

void OptionParser::flag(std::vector<std::string_view> names, std::function<void()> on) {
  options_.push_back({std::move(names), false, [on = std::move(on)](auto, auto) { on(); }});
}

void OptionParser::text(std::vector<std::string_view> names, std::string& target) {
  value(std::move(names), [&target](auto, std::string_view v) { target = v; });
}

void OptionParser::value(std::vector<std::string_view> names, ValueHandler on) {
  options_.push_back({std::move(names), true, std::move(on)});
}

bool OptionParser::parse(Args args) const {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string_view a = args[i];
    if (is_help_flag(a)) {
      std::fwrite(usage_.data(), 1, usage_.size(), stdout);
      return false;
    }
    const auto match = std::find_if(options_.begin(), options_.end(), [&](const Option& o) {
      return std::find(o.names.begin(), o.names.end(), a) != o.names.end();
    });
    if (match == options_.end() && positional_ && (!a.starts_with('-') || a == "-")) {
      positional_(a);
      continue;
    }
    if (match == options_.end()) {
      const bool option = a.starts_with('-') && a != "-";
      throw std::invalid_argument(
          std::string(option ? "unknown option '" : "unexpected argument '") + std::string(a) +
          "' (see kiln " + command_ + " --help)");
    }
    match->on(a, match->takes_value ? option_value(args, i) : std::string_view());
  }
  return true;
}

}  // namespace kiln::cli
