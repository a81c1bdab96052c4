// launch/from_checkpoint.h — a fine-tuned model rebuilt from a checkpoint (what eval and export share).
//
// Design note: a checkpoint holds only what was learned (dist/checkpoint.h) plus what is needed to
// rebuild the rest: the resolved config INI of the run, the method description, the backbone's
// identity and the sparse methods' fixed indices. The INI is re-parsed with `train`'s own option
// declarations (so every default and section means what it meant in training), a few options may be
// overridden (a moved weights file, another data directory), the backbone is loaded and checked
// against the recorded identity (config, sha256 of the weights file, or the hash of the frozen
// tensors for a named random-init config), the MethodSet is built from the same options, FISH gets its
// stored mask (sparse::restore_indices: no Fisher recomputed), the methods are applied, and the saved
// values are copied into the trainables by name, with names, shapes and dtypes checked. Anything that
// does not match is a dt::UsageError naming the checkpoint and the difference.
#pragma once

#include <boost/program_options/variables_map.hpp>

#include <optional>
#include <string>
#include <vector>

#include "dist/checkpoint.h"
#include "tasks/glue.h"
#include "launch/task_model.h"
#include "peft/method.h"

namespace dt::launch {

// A checkpoint file, or a directory (train's --out): the file its `latest` names, else its newest.
// dt::UsageError when nothing is there.
std::string resolve_checkpoint(const std::string& path_or_dir, const std::string& subcommand);

// Options of the checkpoint's run that the caller may replace (empty: the checkpoint's own).
struct CheckpointOverrides {
  std::string model;      // the weights moved; the identity check still applies
  std::string tokenizer;
  std::string data;       // another copy of the GLUE folders
  std::string task;       // the checkpoint's task, or some of a multi-task checkpoint's (their heads were trained)
};

struct RestoredModel {
  std::string path;                // the checkpoint file read
  dist::CheckpointState state;     // as read (every checksum verified)
  boost::program_options::variables_map options;  // the run's resolved options, overrides applied
  tasks::TaskList task_list;       // the run's --task list (its heads, in order)
  const tasks::TaskInfo* task = nullptr;  // its first task (the only one of a single-task run)
  TaskModel model;                 // backbone (hooks attached) + tokenizer
  peft::MethodSet methods;
  std::vector<peft::Trainable> trainables;  // holding the checkpoint's values
  int64_t backbone_params = 0;     // parameters of the backbone itself (task head included)
};

// Rebuilds the model of `checkpoint_path` (a file; see resolve_checkpoint). `check_identity`: verify
// the backbone against the checkpoint's identity (weights sha256 / frozen-tensor hash); eval's other
// ranks skip the hashing that rank 0 does. Not collective.
RestoredModel restore_model(const std::string& checkpoint_path, const CheckpointOverrides& overrides,
                            bool check_identity = true);

// The checkpoint's config INI parsed with train's options, `overrides` (command-line words such as
// {"--model", "x.bin"}) taking precedence. dt::UsageError naming the checkpoint on an unknown key.
boost::program_options::variables_map parse_checkpoint_config(const std::string& config_ini,
                                                              const std::vector<std::string>& overrides,
                                                              const std::string& path);

}  // namespace dt::launch
