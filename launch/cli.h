// launch/cli.h — the `deltatune` subcommands and their options (the contract of ../shared/CLI.md).
//
// Design note: every option is declared once, in an option group (options.cpp) or by the subcommand
// that alone uses it, with Boost.Program_options. The same declaration serves `--help`, the INI file
// given by `--config FILE` (section `[fish]` + `keep = 0.005` == `--fish.keep 0.005`), command-line
// overrides and `--print-config`, so they cannot drift apart. Only launch/ exits the process:
// dt::UsageError (bad flags, values, files) exits 2 with one line on stderr; other errors exit 1.
#pragma once

#include <boost/program_options.hpp>

#include <functional>
#include <string>
#include <vector>

namespace dt::launch {

namespace po = boost::program_options;

// Option groups shared by several subcommands. Each adds its options to `desc`.
void add_common_options(po::options_description& desc);   // --config, --print-config, --log-all-ranks, --threads
void add_model_options(po::options_description& desc);    // --model, --tokenizer, --task, --data
void add_method_options(po::options_description& desc);   // --method and every method's section
void add_train_options(po::options_description& desc);    // --train.*
void add_dist_options(po::options_description& desc);     // --dist.*
void add_checkpoint_options(po::options_description& desc);  // --out, --ckpt.*, --resume, --metrics

struct Subcommand {
  std::string name;
  std::string summary;
  // Adds this subcommand's options (shared groups and its own) to `desc`.
  std::function<void(po::options_description&)> add_options;
  // Positional arguments, by option name (e.g. `inspect CKPT` -> "checkpoint"); may be empty.
  std::vector<std::string> positional;
  // Runs the subcommand on parsed, notified options. Returns the process exit code.
  std::function<int(const po::variables_map&)> run;
};

// Each subcommand file defines one of these.
Subcommand train_subcommand();
Subcommand eval_subcommand();
Subcommand generate_subcommand();
Subcommand plan_subcommand();
Subcommand mask_subcommand();
Subcommand inspect_subcommand();
Subcommand export_subcommand();
Subcommand commbench_subcommand();
Subcommand search_subcommand();  // launch/search.cpp: S3Delta's structure search

std::vector<Subcommand> all_subcommands();

// Parses argv for `sub` (argv[0] is the subcommand name), merging `--config FILE` under the command
// line. Throws dt::UsageError on unknown options, bad values and unreadable files.
po::variables_map parse_options(const Subcommand& sub, const po::options_description& desc,
                                const std::vector<std::string>& args);

// The resolved configuration as an INI file (sections by the prefix before the first '.'),
// options at their defaults included. `--print-config` prints it; train hashes it at start-up.
// The string value of option `name`, or "" when it was not given.
std::string option_or_empty(const po::variables_map& vm, const char* name);

std::string render_config(const po::options_description& desc, const po::variables_map& vm);

}  // namespace dt::launch
