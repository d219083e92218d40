// Subcommand registry for the single `kiln` binary.
//
// Each cli/cmd_*.cpp file registers itself with a static `Command` object; the
// files are compiled straight into the executable (not a static library), so
// the registrations are never dropped by the linker.
#pragma once

#include <functional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::cli {

// Arguments after the subcommand name (argv[2..]).
using Args = std::span<char* const>;

struct Command {
  std::string_view name;
  std::string_view summary;  // one line for `kiln --help`
  std::function<int(Args)> run;
  Command(std::string_view name, std::string_view summary, std::function<int(Args)> run);
};

const std::vector<const Command*>& commands();

// Small helpers shared by subcommands.
bool is_help_flag(std::string_view arg);
// Parses a non-negative integer option value or throws naming the option.
long parse_int_option(std::string_view option, std::string_view value, long min, long max);
// Fetches the value after an option (argv[i+1]) or throws "OPTION needs a value".
std::string_view option_value(Args args, size_t& i);

}  // namespace kiln::cli
