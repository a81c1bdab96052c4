// model/tokenizer_sp.cpp — SentencePiece models (`.model`), e.g. T5's spiece.model, via libsentencepiece.
//
// The special ids are the model's own: for T5 pad 0, eos 1, unk 2 and no bos (-1). encode() returns
// the plain pieces; T5 callers append eos themselves.
//
// Design note (why dlopen): Debian's libsentencepiece bundles its own protobuf-lite 3.14 and exports
// its symbols; Debian's libtorch 1.13 brought libprotobuf 3.21 (PyPI's libtorch 2.x keeps its copy
// inside, but a user's process may still load another). Linked into one process, the dynamic linker binds
// one copy's calls to the other's code and the process crashes in static initialization, before
// main(). So libsentencepiece is never linked: it is loaded on first use with RTLD_LOCAL |
// RTLD_DEEPBIND, which binds it to its own protobuf and keeps its symbols out of the global scope.
// The header's classes are used as they are: their virtual functions are called through the vtable;
// the only non-virtual functions this file calls (the processor's constructor, Status's destructor and
// error_message) resolve to forwarders in tokenizer.cpp, which call the loaded library's.
#include <dlfcn.h>
#include <sentencepiece_processor.h>

#include <memory>
#include <string>
#include <vector>

#include "model/tokenizer.h"
#include "util/error.h"

namespace dt::model {

namespace sentencepiece_abi {

// AddressSanitizer refuses RTLD_DEEPBIND (its interceptors must stay first in every library's lookup), so
// a sanitizer build (bench/fuzz.py's build-san/) loads the library without it: there libtorch is PyPI's,
// which exports no protobuf, so the library's protobuf calls still reach its own copy.
#if defined(__SANITIZE_ADDRESS__)
#define DT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DT_ASAN 1
#endif
#endif
#ifdef DT_ASAN
constexpr int kDeepBind = 0;
#else
constexpr int kDeepBind = RTLD_DEEPBIND;
#endif

void* library() {
  static void* handle = [] {
    void* h = dlopen("libsentencepiece.so.0", RTLD_NOW | RTLD_LOCAL | kDeepBind);
    if (!h) {
      const char* why = dlerror();
      DT_FAIL(std::string("cannot load libsentencepiece.so.0: ") + (why ? why : "?"),
              "install Debian's libsentencepiece0 (the package the build links against)");
    }
    return h;
  }();
  return handle;
}

void* symbol(const char* mangled) {
  void* fn = dlsym(library(), mangled);
  DT_CHECK(fn != nullptr, std::string("libsentencepiece.so.0 lacks ") + mangled);
  return fn;
}

}  // namespace sentencepiece_abi

namespace {

class SentencePieceTokenizer : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& path) {
    sentencepiece_abi::library();  // before the constructor's forwarder needs it
    processor_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
    const auto status = processor_->Load(path);
    if (!status.ok()) {
      throw UsageError("cannot load SentencePiece model '" + path + "': " + status.error_message());
    }
  }

  std::vector<int64_t> encode(const std::string& text) const override {
    std::vector<int> ids;
    const auto status = processor_->Encode(text, &ids);
    DT_CHECK(status.ok(), std::string("SentencePiece encode failed: ") + status.error_message());
    return {ids.begin(), ids.end()};
  }

  std::string decode(const std::vector<int64_t>& ids) const override {
    std::vector<int> pieces;
    pieces.reserve(ids.size());
    for (int64_t id : ids) {
      DT_CHECK(id >= 0 && id < vocab_size(), "SentencePiece: token id " + std::to_string(id) +
                                                 " outside the vocabulary of " + std::to_string(vocab_size()));
      pieces.push_back(static_cast<int>(id));
    }
    std::string text;
    const auto status = processor_->Decode(pieces, &text);
    DT_CHECK(status.ok(), std::string("SentencePiece decode failed: ") + status.error_message());
    return text;
  }

  int64_t vocab_size() const override { return processor_->GetPieceSize(); }
  int64_t bos_id() const override { return processor_->bos_id(); }
  int64_t eos_id() const override { return processor_->eos_id(); }
  int64_t pad_id() const override { return processor_->pad_id(); }

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
};

}  // namespace

// Declared in tokenizer.cpp, which dispatches on the file's extension.
std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& path) {
  return std::make_unique<SentencePieceTokenizer>(path);
}

}  // namespace dt::model
