// Command-line parsing for every subcommand: a small table of options, so the commands agree
// on how options, values, --help and errors work.
#pragma once

#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "cli/command.h"

namespace kiln::cli {

// Parses a float option value: the whole text must be one decimal number. Values too small for
// a float become 0 or a subnormal (1e-39 is a valid temperature, not an error); NaN, the
// infinities and values too large for a float throw std::invalid_argument saying the option
// must be a finite number.
float parse_float_option(std::string_view option, std::string_view value);
// The shortest text that reads back as `v` ("0", "1e-05").
std::string format_number(float v);

// Options are matched by exact name; an option that takes a value reads the
// next argument. -h/--help prints the usage text; anything else unknown is an
// error that points at `kiln COMMAND --help`.
class OptionParser {
 public:
  OptionParser(std::string_view command, std::string_view usage)
      : command_(command), usage_(usage) {}

  // `on(option, value)`: option is the name as the user spelled it (for errors).
  using ValueHandler = std::function<void(std::string_view option, std::string_view value)>;

  void flag(std::vector<std::string_view> names, bool& target);
  // A flag with an action (for flags that set something other than a bool).
  void flag(std::vector<std::string_view> names, std::function<void()> on);
  void text(std::vector<std::string_view> names, std::string& target);
  void value(std::vector<std::string_view> names, ValueHandler on);
  // An integer in [min, max], via parse_int_option.
  template <typename Int>
  void integer(std::vector<std::string_view> names, Int& target, long min, long max) {
    value(std::move(names), [&target, min, max](std::string_view option, std::string_view v) {
      target = static_cast<Int>(parse_int_option(option, v, min, max));
    });
  }

  // A finite number >= min, via parse_float_option.
  void number(std::vector<std::string_view> names, float& target, float min) {
    value(std::move(names), [&target, min](std::string_view option, std::string_view v) {
      target = parse_float_option(option, v);
      if (!(target >= min)) {
        throw std::invalid_argument(std::string(option) + " expects a number >= " +
                                    format_number(min) + ", got '" + std::string(v) + "'");
      }
    });
  }

  // Arguments that are not options (do not start with '-', or are "-" alone) go to `on`, in
  // order; without it they are errors.
  void positional(std::function<void(std::string_view)> on) { positional_ = std::move(on); }

  // Parses every argument; returns false when the usage was printed (the
  // command then exits 0).
  bool parse(Args args) const;

 private:
  struct Option {
    std::vector<std::string_view> names;
    bool takes_value;
    ValueHandler on;
  };
  std::string command_;
  std::string_view usage_;
  std::vector<Option> options_;
  std::function<void(std::string_view)> positional_;
};

}  // namespace kiln::cli
