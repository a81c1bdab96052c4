// Rows of the shared method table (test_methods.cpp) for the sparse methods of sparse/. FISH rows
// choose their mask without data (--fish.select magnitude | random: the Fisher needs a data set, which
// the table does not have; the Fisher path is tested in tests/sparse/), globally and per tensor.
#include "sparse/methods.h"
#include "tests/peft/method_cases.h"

namespace {

[[maybe_unused]] const int kRows = [] {
  dt::sparse::register_methods();
  std::vector<dt::testing::MethodCase> rows;
  for (const char* model : {"tiny-llama", "tiny-t5", "tiny-t5-v1_1", "tiny-bert"}) {
    rows.push_back({model, "fish", {"--fish.select", "magnitude", "--fish.keep", "0.01"}, true});
    rows.push_back({model, "fish", {"--fish.select", "random", "--fish.per-tensor", "--fish.keep", "0.02"}, true});
    rows.push_back({model, "fish", {"--fish.select", "magnitude", "--fish.count", "100", "--fish.include", "*.weight",
                                    "--fish.exclude", "*embed*,shared*"}, true});
    rows.push_back({model, "dsee", {"--dsee.rank", "2", "--dsee.sparse", "16"}, true});
    rows.push_back({model, "dsee", {"--dsee.select", "magnitude", "--dsee.targets", "q,k,v,o,wi,wo"}, true});
    rows.push_back({model, "fish+bitfit", {"--fish.select", "magnitude", "--fish.include", "*.weight"}, true});
    // SparseAdapter: the selections that need no data (snip and grasp score on data: tests/sparse/).
    rows.push_back({model, "sparse_adapter", {"--sparse-adapter.score", "magnitude", "--houlsby.bottleneck", "4"}, false});
    rows.push_back({model, "sparse_adapter", {"--sparse-adapter.score", "erk", "--sparse-adapter.adapter", "parallel",
                                              "--parallel_adapter.bottleneck", "8"}, false});
    rows.push_back({model, "sparse_adapter", {"--sparse-adapter.score", "random", "--sparse-adapter.adapter", "pfeiffer",
                                              "--sparse-adapter.ratio", "0.5"}, false});
  }
  return dt::testing::add_method_cases(rows);
}();

}  // namespace
