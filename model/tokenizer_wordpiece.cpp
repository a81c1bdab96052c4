// model/tokenizer_wordpiece.cpp — BERT's uncased tokenizer: BasicTokenizer, then greedy WordPiece.
//
// Follows HF BertTokenizer (do_lower_case=True): drop control characters, put spaces around CJK
// ideographs, split on whitespace, lower-case, strip accents (NFD and drop combining marks), split
// off punctuation, then longest-match-first WordPiece with "##" continuations and [UNK] for words
// over 100 characters or with no match. No ICU here: lower-casing covers ASCII, Latin-1, Latin
// Extended-A, Greek and Cyrillic; accent stripping covers Latin-1 and Latin Extended-A (the
// precomposed letters of Western and Central European text) and any combining mark U+0300–U+036F.
#include <fstream>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/tokenizer.h"
#include "util/error.h"

namespace dt::model {

namespace {

constexpr size_t kMaxWordChars = 100;

// U+00C0..U+017F after lower-casing -> ASCII base letter, '.' where NFD has no ASCII base
// (generated with Python's unicodedata: NFD, drop category Mn).
constexpr char kFoldLatin[] =
    "aaaaaa.ceeeeiiii.nooooo..uuuuy..aaaaaa.ceeeeiiii.nooooo..uuuuy.yaaaaaaccccccccdd..eeeeeeeeeegggggggghh..iiiiiiiii."
    "..jjkk.llllll....nnnnnn...oooooo..rrrrrrsssssssstttt..uuuuuuuuuuuuwwyyyzzzzzz.";

std::vector<char32_t> utf8_decode(const std::string& s) {
  std::vector<char32_t> out;
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (len == 0 || i + len > s.size()) {
      out.push_back(0xFFFD);  // invalid byte: replacement character (dropped by clean-up below)
      ++i;
      continue;
    }
    char32_t cp = len == 1 ? c : c & (0xFF >> (len + 1));
    bool ok = true;
    for (int k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      ok = ok && (cc >> 6) == 0x2;
      cp = (cp << 6) | (cc & 0x3F);
    }
    out.push_back(ok ? cp : 0xFFFD);
    i += ok ? len : 1;
  }
  return out;
}

void utf8_append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

bool is_whitespace(char32_t c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x202F || c == 0x205F || c == 0x3000;
}

bool is_control(char32_t c) {
  if (c == '\t' || c == '\n' || c == '\r') return false;
  return c < 0x20 || (c >= 0x7F && c <= 0x9F) || c == 0x200B || c == 0xFEFF;
}

// BERT treats every non-alphanumeric ASCII character as punctuation, plus Unicode P* characters.
bool is_punctuation(char32_t c) {
  if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126)) return true;
  return c == 0xA1 || c == 0xA7 || c == 0xAB || c == 0xB6 || c == 0xB7 || c == 0xBB || c == 0xBF ||
         (c >= 0x2010 && c <= 0x2027) || (c >= 0x2030 && c <= 0x205E) || (c >= 0x3001 && c <= 0x3003) ||
         (c >= 0x3008 && c <= 0x3011) || (c >= 0x3014 && c <= 0x301F) || (c >= 0xFF01 && c <= 0xFF0F) ||
         (c >= 0xFF1A && c <= 0xFF20) || (c >= 0xFF3B && c <= 0xFF40) || (c >= 0xFF5B && c <= 0xFF65);
}

bool is_cjk(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

char32_t to_lower(char32_t c) {
  if (c >= 'A' && c <= 'Z') return c + 32;
  if (c < 0xC0) return c;
  if (c <= 0xDE) return c == 0xD7 ? c : c + 0x20;
  if (c == 0x178) return 0xFF;
  if (c == 0x130) return 'i';  // İ lower-cases to i + combining dot, which NFD then drops
  if ((c >= 0x100 && c <= 0x137) || (c >= 0x14A && c <= 0x177)) return (c % 2 == 0) ? c + 1 : c;
  if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E)) return (c % 2 == 1) ? c + 1 : c;
  if (c >= 0x391 && c <= 0x3A9 && c != 0x3A2) return c + 0x20;
  if (c >= 0x410 && c <= 0x42F) return c + 0x20;
  if (c >= 0x400 && c <= 0x40F) return c + 0x50;
  return c;
}

// 0 means "drop" (a combining mark left by NFD).
char32_t strip_accent(char32_t c) {
  if (c >= 0x300 && c <= 0x36F) return 0;
  if (c >= 0xC0 && c <= 0x17F && kFoldLatin[c - 0xC0] != '.') return static_cast<char32_t>(kFoldLatin[c - 0xC0]);
  return c;
}

class WordPieceTokenizer : public Tokenizer {
 public:
  explicit WordPieceTokenizer(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw UsageError("cannot read WordPiece vocabulary '" + path + "'");
    std::string line;
    while (std::getline(in, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      ids_.emplace(line, static_cast<int64_t>(tokens_.size()));  // first occurrence wins
      tokens_.push_back(line);
    }
    auto special = [&](const std::string& token) {
      auto it = ids_.find(token);
      if (it == ids_.end()) throw UsageError("WordPiece vocabulary '" + path + "' has no " + token + " token");
      return it->second;
    };
    unk_ = special("[UNK]");
    cls_ = special("[CLS]");
    sep_ = special("[SEP]");
    pad_ = special("[PAD]");
  }

  std::vector<int64_t> encode(const std::string& text) const override {
    std::vector<int64_t> ids;
    for (const std::string& word : basic_tokenize(text)) wordpiece(word, ids);
    return ids;
  }

  std::string decode(const std::vector<int64_t>& ids) const override {
    std::string out;
    for (int64_t id : ids) {
      DT_CHECK(id >= 0 && id < vocab_size(), "WordPiece: token id " + std::to_string(id) + " outside the vocabulary");
      const std::string& t = tokens_[id];
      if (t.size() > 2 && t[0] == '#' && t[1] == '#') {
        out += t.substr(2);
      } else {
        if (!out.empty()) out += ' ';
        out += t;
      }
    }
    return out;
  }

  int64_t vocab_size() const override { return static_cast<int64_t>(tokens_.size()); }
  int64_t bos_id() const override { return cls_; }
  int64_t eos_id() const override { return sep_; }
  int64_t pad_id() const override { return pad_; }

 private:
  // BasicTokenizer: words and punctuation marks, lower-cased and accent-free, as UTF-8.
  static std::vector<std::string> basic_tokenize(const std::string& text) {
    std::vector<std::string> words;
    std::string current;
    auto flush = [&] {
      if (!current.empty()) words.push_back(std::move(current));
      current.clear();
    };
    for (char32_t c : utf8_decode(text)) {
      if (c == 0 || c == 0xFFFD || is_control(c)) continue;
      if (is_whitespace(c)) {
        flush();
        continue;
      }
      c = strip_accent(to_lower(c));
      if (c == 0) continue;
      if (is_punctuation(c) || is_cjk(c)) {  // each is a word of its own
        flush();
        utf8_append(current, c);
        flush();
        continue;
      }
      utf8_append(current, c);
    }
    flush();
    return words;
  }

  // Greedy longest-match-first; a word with any unmatchable rest becomes one [UNK].
  void wordpiece(const std::string& word, std::vector<int64_t>& out) const {
    const std::vector<char32_t> chars = utf8_decode(word);
    if (chars.size() > kMaxWordChars) {
      out.push_back(unk_);
      return;
    }
    std::vector<int64_t> pieces;
    size_t start = 0;
    while (start < chars.size()) {
      int64_t found = -1;
      size_t end = chars.size();
      for (; end > start; --end) {
        std::string piece = start > 0 ? "##" : "";
        for (size_t k = start; k < end; ++k) utf8_append(piece, chars[k]);
        auto it = ids_.find(piece);
        if (it != ids_.end()) {
          found = it->second;
          break;
        }
      }
      if (found < 0) {
        out.push_back(unk_);
        return;
      }
      pieces.push_back(found);
      start = end;
    }
    out.insert(out.end(), pieces.begin(), pieces.end());
  }

  std::vector<std::string> tokens_;
  std::unordered_map<std::string, int64_t> ids_;
  int64_t unk_ = 100, cls_ = 101, sep_ = 102, pad_ = 0;
};

}  // namespace

// Declared in tokenizer.cpp, which dispatches on the file's extension.
std::unique_ptr<Tokenizer> load_wordpiece_tokenizer(const std::string& path) {
  return std::make_unique<WordPieceTokenizer>(path);
}

}  // namespace dt::model
