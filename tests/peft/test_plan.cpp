// Trainable counts from the config alone, against the published numbers and closed forms.
#include <gtest/gtest.h>

#include <boost/program_options.hpp>

#include "model/config.h"
#include "peft/method.h"
#include "tests/peft/test_adapters_util.h"
#include "util/error.h"

using namespace dt;

namespace {

int64_t count(const std::vector<model::TensorMeta>& metas) { return model::total_params(metas); }

peft::MethodSet methods(const std::vector<std::string>& args) { return dt::testing::adapters::method_set(args); }

}  // namespace

TEST(PeftPlan, LoraOnT5BaseQV) {
  // The LoRA paper's setting: r = 8 on q and v of every attention (12 encoder self, 12 decoder self,
  // 12 decoder cross): 36 modules × 2 projections × 8 × (768 + 768).
  const auto config = model::named_config("t5-base");
  EXPECT_EQ(count(methods({"--method", "lora", "--lora.r", "8", "--lora.targets", "q,v"}).plan(config, 0)), 884736);
}

TEST(PeftPlan, BitFitOnT5Base) {
  const auto config = model::named_config("t5-base");
  EXPECT_EQ(count(methods({"--method", "bitfit"}).plan(config, 0)), 282496);
}

TEST(PeftPlan, FullIsTheWholeBackbonePlusHead) {
  const auto config = model::named_config("stories260K");
  EXPECT_EQ(count(methods({"--method", "full"}).plan(config, 0)), 260032);
  EXPECT_EQ(count(methods({"--method", "full"}).plan(config, 2)), 260032 + 2 * 64);
}

TEST(PeftPlan, ClosedFormsOnStories260K) {
  const auto c = model::named_config("stories260K");
  const int64_t L = c.num_layers, d = c.d_model, kv = c.num_kv_heads * c.d_kv, ff = c.d_ff;
  // LoRA r=4 on q,k,v,o: q (d->d), k and v (d->kv), o (d->d).
  const int64_t lora = L * 4 * ((d + d) + (d + kv) + (d + kv) + (d + d));
  EXPECT_EQ(count(methods({"--method", "lora", "--lora.r", "4", "--lora.targets", "q,k,v,o"}).plan(c, 0)), lora);
  // BitFit: q, o (d), k, v (kv), FFN intermediate (ff) and output (d), 2 norms per layer, final norm.
  const int64_t bitfit = L * (d + kv + kv + d + ff + d + 2 * d) + d;
  EXPECT_EQ(count(methods({"--method", "bitfit"}).plan(c, 0)), bitfit);
  // Composition adds up, and a name twice is refused.
  EXPECT_EQ(count(methods({"--method", "lora+bitfit", "--lora.r", "4", "--lora.targets", "q,k,v,o"}).plan(c, 0)),
            lora + bitfit);
  EXPECT_THROW(methods({"--method", "lora+lora"}), UsageError);
  EXPECT_THROW(methods({"--method", "nonsense"}), UsageError);
  EXPECT_THROW(methods({"--method", "lora", "--lora.targets", "q,x"}), UsageError);
}

TEST(PeftRegistry, DuplicatesAreRejected) {
  peft::Registry registry;
  peft::register_lora(registry);
  EXPECT_THROW(peft::register_lora(registry), Error);
}

TEST(PeftAccounting, LineFormat) {
  EXPECT_EQ(peft::accounting_line(884736, 223788288),
            "trainable params: 884,736 || all params: 223,788,288 || trainable%: 0.3953");
}
