#include "model/backbone.h"

#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/mse_loss.h>

#include "util/error.h"

namespace dt::model {

// Only label-word backbones (T5) take label words; a caller that sets them elsewhere has the wrong backbone.
void Backbone::set_label_token_ids(std::vector<int64_t>) {
  DT_FAIL(config().name + " classifies with a task head, not with label words");
}

const std::vector<int64_t>& Backbone::label_token_ids() const {
  static const std::vector<int64_t> none;
  return none;
}

void task_head_output(const at::Tensor& all_logits, const Batch& batch, ForwardResult& result) {
  if (batch.head_size > 0) {
    DT_CHECK(batch.head_offset >= 0 && batch.head_offset + batch.head_size <= all_logits.size(-1),
             "task head columns [" + std::to_string(batch.head_offset) + ", " +
                 std::to_string(batch.head_offset + batch.head_size) + ") outside a head of " +
                 std::to_string(all_logits.size(-1)));
  }
  result.logits = batch.head_size > 0 ? all_logits.narrow(-1, batch.head_offset, batch.head_size) : all_logits;
  if (!batch.labels.defined()) return;
  if (batch.labels.is_floating_point()) {
    DT_CHECK(result.logits.size(-1) == 1, "regression labels need a one-column head, this one has " +
                                              std::to_string(result.logits.size(-1)));
    result.loss = at::mse_loss(result.logits.select(-1, 0).to(at::kFloat), batch.labels.view({-1}).to(at::kFloat));
  } else {
    result.loss = at::cross_entropy_loss(result.logits, batch.labels.view({-1}).to(at::kLong));
  }
}

}  // namespace dt::model
