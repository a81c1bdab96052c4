// util/format.h — numbers as people read them in logs and tables.
#pragma once

#include <cstdint>
#include <string>

namespace dt {

// 884736 -> "884,736" (as HF PEFT prints counts), independent of the process locale.
std::string with_commas(int64_t n);
// 1536 -> "1.50 KiB".
std::string human_bytes(int64_t bytes);

}  // namespace dt
