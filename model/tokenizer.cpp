// model/tokenizer.cpp — load_tokenizer(): picks the tokenizer by the file's extension.
#include "model/tokenizer.h"

#include <fstream>

#include "model/tokenizer_bpe.h"
#include "util/error.h"

namespace dt::model {

// Defined in tokenizer_sp.cpp and tokenizer_wordpiece.cpp (the classes stay private to those files).
std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& path);
std::unique_ptr<Tokenizer> load_wordpiece_tokenizer(const std::string& path);

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  if (!std::ifstream(path)) throw UsageError("cannot read tokenizer file '" + path + "'");
  auto ends_with = [&](const std::string& suffix) {
    return path.size() >= suffix.size() && path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  if (ends_with(".model")) return load_sentencepiece_tokenizer(path);
  if (ends_with(".txt")) return load_wordpiece_tokenizer(path);
  if (ends_with(".bin")) return load_llama2c_tokenizer(path);
  throw UsageError("tokenizer file '" + path +
                   "': unknown kind (expected a SentencePiece .model, a WordPiece vocab .txt or a llama2.c .bin)");
}

// ---- forwarders into the dlopen'ed libsentencepiece (why: see tokenizer_sp.cpp) ----------------
// They carry the mangled names of the non-virtual functions that tokenizer_sp.cpp's use of
// <sentencepiece_processor.h> calls, so the link never needs libsentencepiece; this file must not
// include that header (its declarations of the same names would clash).
namespace sentencepiece_abi {
void* symbol(const char* mangled);  // in tokenizer_sp.cpp
}

#define DT_SP_PROCESSOR_CTOR "_ZN13sentencepiece22SentencePieceProcessorC1Ev"
#define DT_SP_STATUS_DTOR "_ZN13sentencepiece4util6StatusD1Ev"
#define DT_SP_STATUS_MESSAGE "_ZNK13sentencepiece4util6Status13error_messageEv"

void sp_processor_ctor(void* self) __asm__(DT_SP_PROCESSOR_CTOR);
void sp_status_dtor(void* self) __asm__(DT_SP_STATUS_DTOR);
const char* sp_status_message(const void* self) __asm__(DT_SP_STATUS_MESSAGE);

void sp_processor_ctor(void* self) {
  static auto* real = reinterpret_cast<void (*)(void*)>(sentencepiece_abi::symbol(DT_SP_PROCESSOR_CTOR));
  real(self);
}
void sp_status_dtor(void* self) {
  static auto* real = reinterpret_cast<void (*)(void*)>(sentencepiece_abi::symbol(DT_SP_STATUS_DTOR));
  real(self);
}
const char* sp_status_message(const void* self) {
  static auto* real = reinterpret_cast<const char* (*)(const void*)>(sentencepiece_abi::symbol(DT_SP_STATUS_MESSAGE));
  return real(self);
}

}  // namespace dt::model
