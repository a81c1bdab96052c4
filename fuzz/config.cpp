// fuzz/config.cpp — the INI config file (--config), as `train` reads it: program_options' parser, our
// unknown-key and last-one-wins rules, --print-config's rendering, then the method options it sets
// (--method and every method's section) planned on three tiny backbones (T5, BERT, Llama). Errors of the
// file itself must name it; a method option a plan refuses is a dt::Error naming the option.
#include <boost/program_options.hpp>

#include "fuzz/fuzz_util.h"
#include "launch/cli.h"
#include "launch/method_options.h"
#include "model/config.h"
#include "peft/method.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = dt::fuzz::scratch_path("input.ini");
  static const dt::launch::Subcommand train = dt::launch::train_subcommand();
  static const boost::program_options::options_description desc = [] {
    boost::program_options::options_description d;
    train.add_options(d);
    return d;
  }();
  dt::fuzz::write_file(path, data, size);
  boost::program_options::variables_map vm;
  bool parsed = false;
  dt::fuzz::expect_clean_error(path, [&] {
    vm = dt::launch::parse_options(train, desc, {"--config", path});
    parsed = true;
  });
  if (!parsed) return 0;
  dt::fuzz::expect_clean_error("", [&] {
    (void)dt::launch::render_config(desc, vm);
    const auto methods = dt::launch::method_set_from(vm);
    for (const char* backbone : {"tiny-t5", "tiny-bert", "tiny-llama"}) {
      (void)methods.plan(dt::model::named_config(backbone), 2);
    }
  });
  return 0;
}
