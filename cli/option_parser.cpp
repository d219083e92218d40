#include "cli/option_parser.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <string>

namespace kiln::cli {

float parse_float_option(std::string_view option, std::string_view value) {
  const std::string text(value);
  auto fail = [&](const char* what) {
    return std::invalid_argument(std::string(option) + " " + what + ", got '" + text + "'");
  };
  // strtod rather than std::stof: stof throws out_of_range on underflow, so "1e-39" read as an
  // error; strtod returns the (sub)normal or zero it rounds to. Leading blanks, which strtod
  // would skip, and hex floats are not numbers a user means.
  if (text.empty() || std::isspace(static_cast<unsigned char>(text[0])) ||
      text.find_first_of("xX") != std::string::npos) {
    throw fail("expects a number");
  }
  char* end = nullptr;
  const double d = std::strtod(text.c_str(), &end);
  if (end != text.c_str() + text.size()) throw fail("expects a number");
  // "inf", "nan" and overflow (strtod gives HUGE_VAL with ERANGE) all land here.
  if (!std::isfinite(d) || std::fabs(d) > std::numeric_limits<float>::max()) {
    throw fail("must be a finite number");
  }
  return static_cast<float>(d);
}

std::string format_number(float v) {
  char buf[32];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  return ec == std::errc() ? std::string(buf, end) : std::to_string(v);
}

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
