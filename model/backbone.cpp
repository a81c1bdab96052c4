#include "model/backbone.h"

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

}  // namespace dt::model
