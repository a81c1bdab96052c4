// launch/options.cpp — the option groups shared by subcommands, parsing, and --print-config.
//
// Every option is declared exactly once here (or in the one subcommand that owns it). Names with a
// dot are INI sections: `--train.lr 1e-4` == `[train]\nlr = 1e-4` in the file given to --config.
#include <boost/program_options.hpp>

#include <algorithm>
#include <fstream>
#include <set>
#include <map>
#include <sstream>

#include "launch/cli.h"
#include "util/error.h"

namespace dt::launch {

void add_common_options(po::options_description& desc) {
  desc.add_options()
      ("help,h", "print this help and exit")
      ("config", po::value<std::string>(), "INI file of options ([section] then key = value); the command line overrides it")
      ("print-config", "print the resolved configuration (INI) and exit")
      ("log-all-ranks", po::bool_switch(), "log from every rank, not only rank 0")
      ("threads", po::value<int>()->default_value(0),
       "torch threads per rank; 0: the node's cores divided by its local ranks, at most the cores the rank is "
       "bound to (mpirun binds to a core by default) and 4 with --device cuda");
}

void add_model_options(po::options_description& desc) {
  desc.add_options()
      ("model", po::value<std::string>()->default_value("data/stories260K/stories260K.bin"),
       "built-in config name (t5-small, t5-base, t5-large, t5-3b, t5-11b, t5-v1_1-*, bert-base, tiny-*) or a weights "
       "file (.safetensors, llama2.c .bin) or a Hugging Face model directory (its model.safetensors + config.json)")
      ("tokenizer", po::value<std::string>()->default_value("data/stories260K/tok512.bin"),
       "tokenizer file: SentencePiece .model, WordPiece vocab .txt, llama2.c .bin")
      ("task", po::value<std::string>()->default_value("sst2"),
       "GLUE task: sst2 | cola | rte | mrpc | stsb (regression) | wnli; a comma list trains them together (multi-task: "
       "a head per task, --multitask.* mixing)")
      ("data", po::value<std::string>()->default_value("data/glue"),
       "directory holding the GLUE task folders (SST-2/, CoLA/, RTE/, MRPC/, STS-B/, WNLI/)")
      ("device", po::value<std::string>()->default_value("cpu"),
       "cpu | cuda | auto (auto: cuda when torch sees a GPU); on cuda each local rank takes GPU local_rank % count");
}

void add_train_options(po::options_description& desc) {
  desc.add_options()
      ("train.steps", po::value<int64_t>()->default_value(200), "optimizer steps")
      ("train.batch-size", po::value<int64_t>()->default_value(16), "examples per rank per micro-step")
      ("train.accum", po::value<int64_t>()->default_value(1), "micro-steps per optimizer step (communicates on the last)")
      ("train.lr", po::value<double>()->default_value(1e-3), "peak learning rate")
      ("train.seed", po::value<uint64_t>()->default_value(42), "seed of initialization, shuffling and dropout")
      ("train.eval-every", po::value<int64_t>()->default_value(0), "evaluate on the dev set every N steps (0: at the end only)")
      ("train.dtype", po::value<std::string>()->default_value("fp32"),
       "fp32 | bf16: the frozen backbone's compute dtype (bf16 for big T5 on a GPU; norms, softmax and loss stay fp32)");
}

void add_dist_options(po::options_description& desc) {
  desc.add_options()
      ("dist.backend", po::value<std::string>()->default_value("auto"),
       "auto | mpi | nccl (auto: NCCL when every rank's tensors are on a GPU of its own, MPI otherwise)")
      ("dist.bucket-mb", po::value<double>()->default_value(25.0), "gradient bucket cap in MiB (the first bucket is 1 MiB)")
      ("dist.compress", po::value<std::string>()->default_value("none"), "none | bf16 | fp16: gradient wire format");
}

void add_checkpoint_options(po::options_description& desc) {
  desc.add_options()
      ("out", po::value<std::string>(), "checkpoint directory")
      ("ckpt.every", po::value<int64_t>()->default_value(0), "write a checkpoint every N steps (0: at the end only)")
      ("ckpt.keep", po::value<int64_t>()->default_value(3), "keep the newest K checkpoints")
      ("resume", po::value<std::string>(), "auto | PATH: continue from a checkpoint")
      ("init-from", po::value<std::string>(), "DIR: start the method's trainables (task head included) from an HF "
       "PEFT adapter directory (adapter_config.json + adapter_model.safetensors; lora, ia3, prompt); a checkpoint "
       "found by --resume takes precedence")
      ("metrics", po::value<std::string>(), "JSON Lines metrics file (one object per step; appended on resume)");
}

namespace {

// Boost's messages name the option with its dashes; keep them, add nothing but the subcommand.
[[noreturn]] void usage(const Subcommand& sub, const std::string& what) {
  throw_usage_error("deltatune " + sub.name + ": " + what + " (see deltatune " + sub.name + " --help)");
}

// An option given twice on the command line (a config's value overridden in a batch script, say) keeps
// its last value, as argparse and torchrun do; program_options would refuse it as "specified more than
// once". Options that compose (lists) keep every occurrence.
po::parsed_options last_occurrence_wins(po::parsed_options parsed, const po::options_description& desc) {
  std::set<std::string> seen;
  std::vector<po::option> kept;
  for (auto it = parsed.options.rbegin(); it != parsed.options.rend(); ++it) {
    const po::option_description* d = it->string_key.empty() ? nullptr : desc.find_nothrow(it->string_key, false);
    const bool composing = d != nullptr && d->semantic()->is_composing();
    if (!it->string_key.empty() && !composing && !seen.insert(it->string_key).second) continue;
    kept.push_back(*it);
  }
  parsed.options.assign(kept.rbegin(), kept.rend());
  return parsed;
}

// `--structure FILE` is s3delta's retrain mode (`train --structure FILE`): it implies --method s3delta, which
// --print-config and checkpoints then record. Another --method with it is refused.
void imply_structure_method(const Subcommand& sub, po::variables_map& vm) {
  if (!vm.count("structure") || !vm.count("method")) return;
  const std::string method = vm["method"].as<std::string>();
  const std::string path = vm["structure"].as<std::string>();
  if (!std::ifstream(path)) usage(sub, "--structure " + path + ": cannot read the file");  // before any loading
  if (vm["method"].defaulted()) {
    vm.at("method") = po::variable_value(boost::any(std::string("s3delta")), false);
  } else if (method != "s3delta") {
    usage(sub, "--structure FILE retrains an S3Delta structure: it implies --method s3delta, not --method " + method);
  }
}

}  // namespace

po::variables_map parse_options(const Subcommand& sub, const po::options_description& desc,
                                const std::vector<std::string>& args) {
  po::variables_map vm;
  try {
    po::positional_options_description positional;
    for (const auto& name : sub.positional) positional.add(name.c_str(), 1);
    po::parsed_options command_line = po::command_line_parser(args).options(desc).positional(positional).run();
    po::store(last_occurrence_wins(command_line, desc), vm);
    if (vm.count("config")) {
      const std::string path = vm["config"].as<std::string>();
      std::ifstream file(path);
      if (!file) usage(sub, "cannot read config file '" + path + "'");
      try {
        // A config file is usually a training run's (configs/*.ini): `plan`, `mask`, ... read the
        // keys they know and skip those only `train` knows; a key nobody knows is still an error.
        po::parsed_options parsed = po::parse_config_file(file, desc, /*allow_unregistered=*/true);
        if (sub.name != "train") {
          po::options_description train_desc;
          train_subcommand().add_options(train_desc);
          for (const auto& o : parsed.options) {
            if (o.unregistered && !train_desc.find_nothrow(o.string_key, /*approx=*/false)) {
              usage(sub, "config file '" + path + "': unrecognised option '" + o.string_key + "'");
            }
          }
        } else {
          for (const auto& o : parsed.options) {
            if (o.unregistered) usage(sub, "config file '" + path + "': unrecognised option '" + o.string_key + "'");
          }
        }
        // Values already stored from the command line win: po::store keeps the first value it sees.
        po::store(parsed, vm);
      } catch (const po::error& e) {
        usage(sub, "config file '" + path + "': " + e.what());
      }
    }
    if (!vm.count("help")) {
      imply_structure_method(sub, vm);
      po::notify(vm);
    }
  } catch (const po::error& e) {
    usage(sub, e.what());
  }
  return vm;
}

namespace {

// Renders one stored value; program_options keeps them as boost::any of the declared type.
std::string render_value(const po::variable_value& v) {
  const boost::any& a = v.value();
  if (a.type() == typeid(std::string)) return boost::any_cast<std::string>(a);
  if (a.type() == typeid(int)) return std::to_string(boost::any_cast<int>(a));
  if (a.type() == typeid(int64_t)) return std::to_string(boost::any_cast<int64_t>(a));
  if (a.type() == typeid(uint64_t)) return std::to_string(boost::any_cast<uint64_t>(a));
  if (a.type() == typeid(bool)) return boost::any_cast<bool>(a) ? "true" : "false";
  if (a.type() == typeid(double)) {
    std::ostringstream os;
    os.precision(17);
    os << boost::any_cast<double>(a);
    return os.str();
  }
  if (a.type() == typeid(std::vector<std::string>)) {
    std::string out;
    for (const auto& s : boost::any_cast<std::vector<std::string>>(a)) out += (out.empty() ? "" : ",") + s;
    return out;
  }
  return "?";
}

}  // namespace

std::string option_or_empty(const po::variables_map& vm, const char* name) {
  return vm.count(name) ? vm[name].as<std::string>() : "";
}

std::string render_config(const po::options_description& desc, const po::variables_map& vm) {
  // Section "" holds the undotted options; options that only steer this program (help, config,
  // print-config) are not configuration and are left out.
  std::map<std::string, std::vector<std::pair<std::string, std::string>>> sections;
  for (const auto& opt : desc.options()) {
    const std::string& name = opt->long_name();
    if (name == "help" || name == "config" || name == "print-config") continue;
    auto it = vm.find(name);
    if (it == vm.end() || it->second.empty()) continue;
    const auto dot = name.find('.');
    const std::string section = dot == std::string::npos ? "" : name.substr(0, dot);
    const std::string key = dot == std::string::npos ? name : name.substr(dot + 1);
    // Flags declared without a value (e.g. --log-all-ranks) hold an empty boost::any.
    sections[section].emplace_back(key, it->second.value().empty() ? "true" : render_value(it->second));
  }
  std::ostringstream out;
  for (const auto& [section, entries] : sections) {
    if (!section.empty()) out << "\n[" << section << "]\n";
    for (const auto& [key, value] : entries) out << key << " = " << value << "\n";
  }
  return out.str();
}

}  // namespace dt::launch
