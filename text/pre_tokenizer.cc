// The byte-level BPE pre-tokenizer: text -> words, each in GPT-2's byte alphabet.
//
// The pre-tokenizer is a chain of splits applied one after another, as in llama.cpp's
// unicode_regex_split: each step splits every piece left by the previous step, keeping both the
// matches and the text between them. The GPT-2, Llama 3 and Qwen2 patterns are hand-written
// scanners that reproduce llama.cpp's own scanners (unicode.cpp), which differ from a regex engine
// on purpose in a few places (e.g. `\s+(?!\S)` never looks past the end of the current piece).
// Every other pattern runs on PCRE2 (UTF + UCP, JIT). Unicode categories come from PCRE2's tables.
// This is the only file of the library that uses PCRE2.
#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "common/strings.h"
#include "text/tokenizer.h"
#include "text/tokenizer_internal.h"

namespace strata::text {

using internal::AppendUtf8;
using internal::ByteAlphabet;
using internal::DecodeLenient;
using internal::kMaxCodepoint;
using internal::Utf8LenFromLead;

namespace {

// --- Unicode properties ----------------------------------------------------------------------

struct CpRange {
  uint32_t first, last;
};

// Letters and numbers assigned in Unicode 15.0 and 15.1 (Kawi, Nag Mundari, CJK extensions H and
// I, ...). PCRE2 10.42 implements Unicode 14 and does not know them; llama.cpp's tables do, so
// they are added to PCRE2's answers (harmless with a newer PCRE2).
// clang-format off
constexpr CpRange kLettersSinceUnicode15[] = {
    {0x1123F, 0x11240}, {0x11F02, 0x11F02}, {0x11F04, 0x11F10}, {0x11F12, 0x11F33},
    {0x1342F, 0x1342F}, {0x13441, 0x13446}, {0x1B132, 0x1B132}, {0x1B155, 0x1B155},
    {0x1DF25, 0x1DF2A}, {0x1E030, 0x1E06D}, {0x1E4D0, 0x1E4EB}, {0x2B739, 0x2B739},
    {0x2EBF0, 0x2EE5D}, {0x31350, 0x323AF}};
constexpr CpRange kNumbersSinceUnicode15[] = {
    {0x11F50, 0x11F59}, {0x1D2C0, 0x1D2D3}, {0x1E4F0, 0x1E4F9}};
// clang-format on

// Rewrites \p{L} and \p{N} in a pattern so that they include the ranges above.
std::string ExpandProperties(std::string_view pattern) {
  auto ranges = [](const auto& list) {
    std::string out;
    for (const CpRange& r : list) out += absl::StrFormat("\\x{%X}-\\x{%X}", r.first, r.last);
    return out;
  };
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const std::string_view rest = pattern.substr(i);
      if (rest.substr(0, 5) == "\\p{L}" || rest.substr(0, 5) == "\\p{N}") {
        const std::string extra =
            rest[3] == 'L' ? ranges(kLettersSinceUnicode15) : ranges(kNumbersSinceUnicode15);
        out += in_class ? StrCat(rest.substr(0, 5), extra)
                        : StrCat("[", rest.substr(0, 5), extra, "]");
        i += 4;
      } else {
        out += pattern.substr(i, 2);
        ++i;
      }
      continue;
    }
    if (c == '[' && !in_class)
      in_class = true;
    else if (c == ']' && in_class)
      in_class = false;
    out += c;
  }
  return out;
}

// Letter (\p{L}) and number (\p{N}) bitmaps over all code points, read out of PCRE2 once by
// matching the properties against a string of the scalar values (a few ms), plus the White_Space
// set that llama.cpp uses for \s.
class UnicodeTables {
 public:
  static const UnicodeTables& Get() {
    static const UnicodeTables* tables = new UnicodeTables();
    return *tables;
  }
  bool IsLetter(uint32_t cp) const { return Test(letter_, cp); }
  bool IsNumber(uint32_t cp) const { return Test(number_, cp); }
  static bool IsWhitespace(uint32_t cp) {
    if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
    switch (cp) {
      case 0x85:
      case 0xA0:
      case 0x1680:
      case 0x2028:
      case 0x2029:
      case 0x202F:
      case 0x205F:
      case 0x3000:
        return true;
      default:
        return cp >= 0x2000 && cp <= 0x200A;
    }
  }

 private:
  using Bits = std::vector<uint64_t>;
  static bool Test(const Bits& bits, uint32_t cp) {
    return cp < kMaxCodepoint && ((bits[cp >> 6] >> (cp & 63)) & 1);
  }

  UnicodeTables() : letter_(kMaxCodepoint / 64), number_(kMaxCodepoint / 64) {
    // Planes 4 and up hold no letters or numbers (unassigned, tags, variation selectors and
    // private use), so the scan stops at U+3FFFF.
    std::string all;
    all.reserve(1100000);
    for (uint32_t cp = 0; cp < 0x40000; ++cp) {
      if (cp >= 0xD800 && cp <= 0xDFFF) continue;
      AppendUtf8(cp, all);
    }
    Fill("\\p{L}+", all, letter_);
    Fill("\\p{N}+", all, number_);
    for (const CpRange& r : kLettersSinceUnicode15) Set(letter_, r);
    for (const CpRange& r : kNumbersSinceUnicode15) Set(number_, r);
  }

  static void Set(Bits& bits, CpRange r) {
    for (uint32_t cp = r.first; cp <= r.last; ++cp) bits[cp >> 6] |= uint64_t{1} << (cp & 63);
  }

  static void Fill(const char* pattern, const std::string& all, Bits& bits) {
    int err = 0;
    PCRE2_SIZE err_off = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern),
                                     PCRE2_ZERO_TERMINATED,
                                     PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK,
                                     &err,
                                     &err_off,
                                     nullptr);
    if (code == nullptr) return;  // cannot happen for these fixed patterns
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(all.data());
    PCRE2_SIZE offset = 0;
    while (offset < all.size()) {
      int rc = pcre2_match(code, subject, all.size(), offset, PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc < 0) break;
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      for (PCRE2_SIZE i = ov[0]; i < ov[1];) {
        const size_t len = Utf8LenFromLead(all[i]);
        uint32_t cp =
            len == 1 ? static_cast<uint8_t>(all[i]) : static_cast<uint8_t>(all[i]) & (0x7F >> len);
        for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<uint8_t>(all[i + k]) & 0x3F);
        bits[cp >> 6] |= uint64_t{1} << (cp & 63);
        i += len;
      }
      offset = ov[1] > ov[0] ? ov[1] : ov[0] + 1;
    }
    pcre2_match_data_free(md);
    pcre2_code_free(code);
  }

  Bits letter_;
  Bits number_;
};

// --- pre-tokenizer patterns (as written in llama.cpp's llm_tokenizer_bpe) ----------------------

// kGpt2, kLlama3 and kQwen2 are hand-written scanners of llama.cpp's patterns (Scanner, each
// method names its pattern); kRegex runs `pattern` with PCRE2.
enum class StepKind { kGpt2, kLlama3, kQwen2, kRegex };

struct StepSpec {
  StepKind kind;
  const char* pattern;  // kRegex only
};

struct PreSpec {
  std::vector<std::string_view> names;
  std::vector<StepSpec> steps;
  bool clean_spaces;
  bool ignore_merges;
  bool add_bos;
};

// Names, split steps and flags as llama.cpp's llama_vocab::impl::load and llm_tokenizer_bpe set
// them for these pre-tokenizers. "gpt2" is accepted as an alias of "gpt-2".
const std::vector<PreSpec>& PreSpecs() {
  constexpr StepSpec kGpt2{StepKind::kGpt2, nullptr};
  constexpr StepSpec kDigits{StepKind::kRegex, "\\p{N}"};
  // clang-format off
  static const auto* specs = new std::vector<PreSpec>{
      // names                                                    steps
      //                                                          clean_spaces ignore_merges add_bos
      {{"default"},
       {{StepKind::kRegex, "[\\p{P}\\$\\+<=>\\^~\\|]+"}, kGpt2, {StepKind::kRegex, "\\p{N}+"},
        {StepKind::kRegex, "[0-9][0-9][0-9]"}},                   true,  false, false},
      {{"gpt2", "gpt-2", "phi-2", "mpt", "olmo"}, {kGpt2},         true,  false, false},
      {{"starcoder", "refact", "codeshell", "exaone", "minerva-7b"},
       {kDigits, kGpt2},                                           true,  false, false},
      {{"smollm", "command-r"}, {kDigits, kGpt2},                  false, false, false},
      {{"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral"},
       {{StepKind::kLlama3, nullptr}},                             true,  true,  true},
      {{"dbrx", "smaug-bpe"}, {{StepKind::kLlama3, nullptr}},      true,  false, false},
      {{"qwen2", "deepseek-r1-qwen"}, {{StepKind::kQwen2, nullptr}}, false, false, false},
      {{"stablelm2", "megrez"}, {{StepKind::kQwen2, nullptr}},     true,  false, false},
  };
  // clang-format on
  return *specs;
}

const PreSpec* FindPreSpec(std::string_view name) {
  for (const PreSpec& spec : PreSpecs()) {
    for (std::string_view n : spec.names) {
      if (n == name) return &spec;
    }
  }
  return nullptr;
}

// The text being split: llama.cpp's code points, a valid UTF-8 copy for PCRE2 and the byte offset
// of each code point in that copy.
struct SplitText {
  std::vector<uint32_t> cps;
  std::string utf8;
  std::vector<size_t> byte_of;  // size cps.size() + 1

  explicit SplitText(std::string_view text) : cps(DecodeLenient(text)) {
    utf8.reserve(text.size());
    byte_of.reserve(cps.size() + 1);
    for (uint32_t cp : cps) {
      byte_of.push_back(utf8.size());
      const bool bad = cp >= kMaxCodepoint || (cp >= 0xD800 && cp <= 0xDFFF);
      AppendUtf8(bad ? 0xFFFD : cp, utf8);
    }
    byte_of.push_back(utf8.size());
  }
  size_t CpAtByte(size_t byte) const {
    return std::lower_bound(byte_of.begin(), byte_of.end(), byte) - byte_of.begin();
  }
};

// Flags of the code point at `pos` within the current piece [ini, end).
struct CpFlags {
  bool in_range = false;
  bool letter = false;
  bool number = false;
  bool space = false;
};

constexpr uint32_t kOutOfRange = 0xFFFFFFFF;

// Scanners for the GPT-2, Llama 3 and Qwen2 patterns: `pieces` are lengths in code points; the
// result splits each of them further.
class Scanner {
 public:
  Scanner(const std::vector<uint32_t>& cps, size_t ini, size_t end, std::vector<size_t>& out)
      : cps_(cps), u_(UnicodeTables::Get()), ini_(ini), end_(end), prev_end_(ini), out_(out) {}

  uint32_t Cpt(size_t pos) const { return pos >= ini_ && pos < end_ ? cps_[pos] : kOutOfRange; }
  CpFlags Flags(size_t pos) const {
    CpFlags f;
    if (pos < ini_ || pos >= end_) return f;
    const uint32_t cp = cps_[pos];
    f.in_range = true;
    f.letter = u_.IsLetter(cp);
    f.number = u_.IsNumber(cp);
    f.space = UnicodeTables::IsWhitespace(cp);
    return f;
  }
  size_t Add(size_t end) {
    const size_t len = end - prev_end_;
    if (len > 0) out_.push_back(len);
    prev_end_ = end;
    return len;
  }

  // 's|'t|'re|'ve|'m|'ll|'d (case-insensitive when `fold`): the length matched, or 0.
  size_t Contraction(size_t pos, bool fold) const {
    if (Cpt(pos) != '\'' || pos + 1 >= end_) return 0;
    auto lower = [&](uint32_t c) { return fold && c >= 'A' && c <= 'Z' ? c + 32 : c; };
    const uint32_t c1 = lower(Cpt(pos + 1));
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
    if (pos + 2 < end_) {
      const uint32_t c2 = lower(Cpt(pos + 2));
      if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
        return 3;
      }
    }
    return 0;
  }

  // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  void Gpt2() {
    for (size_t pos = ini_; pos < end_;) {
      const uint32_t cpt = Cpt(pos);
      if (size_t n = Contraction(pos, /*fold=*/false)) {
        pos += Add(pos + n);
        continue;
      }
      CpFlags f2 = cpt == ' ' ? Flags(pos + 1) : Flags(pos);
      if (f2.letter || f2.number) {
        const bool letter = f2.letter;
        pos += (cpt == ' ');
        while (letter ? f2.letter : f2.number) f2 = Flags(++pos);
        Add(pos);
        continue;
      }
      if (!(f2.space || f2.letter || f2.number) && f2.in_range) {
        pos += (cpt == ' ');
        while (!(f2.space || f2.letter || f2.number) && f2.in_range) f2 = Flags(++pos);
        Add(pos);
        continue;
      }
      if (Whitespace(pos)) continue;
      Add(++pos);
    }
  }

  // Llama 3 (max_digits 3) and Qwen2 (max_digits 1):
  // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max}| ?[^\s\p{L}\p{N}]+[\r\n]*|
  // \s*[\r\n]+|\s+(?!\S)|\s+
  void Llama3(size_t max_digits) {
    for (size_t pos = ini_; pos < end_;) {
      const uint32_t cpt = Cpt(pos);
      const CpFlags flags = Flags(pos);
      if (size_t n = Contraction(pos, /*fold=*/true)) {
        pos += Add(pos + n);
        continue;
      }
      if (!(cpt == '\r' || cpt == '\n' || flags.number) &&
          (flags.letter || Flags(pos + 1).letter)) {
        ++pos;
        while (Flags(pos).letter) ++pos;
        Add(pos);
        continue;
      }
      if (flags.number) {
        size_t start = pos;
        while (Flags(pos).number) {
          if (++pos - start >= max_digits) {
            Add(pos);
            start = pos;
          }
        }
        Add(pos);
        continue;
      }
      CpFlags f2 = cpt == ' ' ? Flags(pos + 1) : flags;
      if (!(f2.space || f2.letter || f2.number) && flags.in_range) {
        pos += (cpt == ' ');
        while (!(f2.space || f2.letter || f2.number) && f2.in_range) f2 = Flags(++pos);
        for (uint32_t c = Cpt(pos); c == '\r' || c == '\n'; c = Cpt(++pos)) {
        }
        Add(pos);
        continue;
      }
      size_t n_space = 0;
      size_t last_newline_end = 0;
      while (Flags(pos + n_space).space) {
        const uint32_t c = Cpt(pos + n_space);
        if (c == '\r' || c == '\n') last_newline_end = pos + n_space + 1;
        ++n_space;
      }
      if (last_newline_end > 0) {  // \s*[\r\n]+
        pos = last_newline_end;
        Add(pos);
        continue;
      }
      if (Whitespace(pos)) continue;
      Add(++pos);
    }
  }

 private:
  // \s+(?!\S)|\s+ as llama.cpp scans it: a run of two or more spaces that is followed by
  // something in this piece leaves its last space to the next token. Advances `pos` via Add.
  bool Whitespace(size_t& pos) {
    size_t n = 0;
    while (Flags(pos + n).space) ++n;
    if (n > 1 && Cpt(pos + n) != kOutOfRange) {
      pos += n - 1;
      Add(pos);
      return true;
    }
    if (n > 0) {
      pos += n;
      Add(pos);
      return true;
    }
    return false;
  }

  const std::vector<uint32_t>& cps_;
  const UnicodeTables& u_;
  size_t ini_, end_, prev_end_;
  std::vector<size_t>& out_;
};

}  // namespace

struct Tokenizer::PreTokenizer {
  struct Step {
    StepKind kind;
    pcre2_code* code = nullptr;
  };
  std::vector<Step> steps;

  ~PreTokenizer() {
    for (Step& s : steps) pcre2_code_free(s.code);
  }

  // Splits `text` into words, each byte-encoded into GPT-2's alphabet.
  std::vector<std::string> Split(std::string_view text) const {
    SplitText st(text);
    std::vector<size_t> pieces = {st.cps.size()};
    std::vector<size_t> next;
    for (const Step& step : steps) {
      next.clear();
      next.reserve(pieces.size() * 2);
      size_t start = 0;
      for (size_t len : pieces) {
        const size_t end = start + len;
        Scanner scanner(st.cps, start, end, next);
        switch (step.kind) {
          case StepKind::kGpt2:
            scanner.Gpt2();
            break;
          case StepKind::kLlama3:
            scanner.Llama3(3);
            break;
          case StepKind::kQwen2:
            scanner.Llama3(1);
            break;
          case StepKind::kRegex:
            RegexSplit(step.code, st, start, end, next);
            break;
        }
        start = end;
      }
      pieces.swap(next);
    }

    const ByteAlphabet& alphabet = ByteAlphabet::Get();
    std::vector<std::string> words;
    words.reserve(pieces.size());
    std::string bytes;
    size_t start = 0;
    for (size_t len : pieces) {
      bytes.clear();
      for (size_t i = start; i < start + len; ++i) AppendUtf8(st.cps[i], bytes);
      std::string word;
      word.reserve(bytes.size() * 2);
      for (char c : bytes) word += alphabet.byte_to_utf8[static_cast<uint8_t>(c)];
      words.push_back(std::move(word));
      start += len;
    }
    return words;
  }

  // Keeps matches and the gaps between them, like llama.cpp's unicode_regex_split_stl. The piece
  // is matched as a subject of its own, so anchors and look-arounds stop at its ends.
  static void RegexSplit(
      pcre2_code* code, const SplitText& st, size_t ini, size_t end, std::vector<size_t>& out) {
    const size_t base = st.byte_of[ini];
    const size_t size = st.byte_of[end] - base;
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(st.utf8.data() + base);
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
    size_t last = ini;  // code point where the unemitted text starts
    PCRE2_SIZE offset = 0;
    while (offset <= size) {
      int rc = pcre2_match(code, subject, size, offset, PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc < 0) break;
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      const size_t m_start = st.CpAtByte(base + ov[0]);
      const size_t m_end = st.CpAtByte(base + ov[1]);
      if (m_end == m_start) {  // empty match: try again one character later
        if (ov[0] >= size) break;
        offset = ov[0] + Utf8LenFromLead(st.utf8[base + ov[0]]);
        continue;
      }
      if (m_start > last) out.push_back(m_start - last);
      out.push_back(m_end - m_start);
      last = m_end;
      offset = ov[1];
    }
    if (end > last) out.push_back(end - last);
    pcre2_match_data_free(md);
  }
};

// Defined here, where PreTokenizer is complete.
Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

absl::Status Tokenizer::InitPreTokenizer() {
  const PreSpec* spec = FindPreSpec(pre_);
  if (spec == nullptr) {
    std::string names;
    for (const PreSpec& s : PreSpecs()) {
      for (std::string_view n : s.names) names = StrCat(names, names.empty() ? "" : ", ", n);
    }
    return absl::UnimplementedError(
        StrCat("tokenizer: unsupported pre-tokenizer '", pre_, "' (supported: ", names, ")"));
  }
  clean_spaces_ = spec->clean_spaces;
  ignore_merges_ = spec->ignore_merges;
  if (spec->add_bos) add_bos_ = true;

  pre_tokenizer_ = std::make_unique<PreTokenizer>();
  for (const StepSpec& s : spec->steps) {
    PreTokenizer::Step step{s.kind, nullptr};
    if (s.kind == StepKind::kRegex) {
      int err = 0;
      PCRE2_SIZE err_off = 0;
      const std::string pattern = ExpandProperties(s.pattern);
      step.code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.c_str()),
                                pattern.size(),
                                PCRE2_UTF | PCRE2_UCP,
                                &err,
                                &err_off,
                                nullptr);
      if (step.code == nullptr) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof(msg));
        return absl::InternalError(absl::StrFormat("tokenizer: bad pattern %s at %d: %s",
                                                   s.pattern,
                                                   err_off,
                                                   reinterpret_cast<const char*>(msg)));
      }
      pcre2_jit_compile(step.code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter
    }
    pre_tokenizer_->steps.push_back(step);
  }
  // Touch the shared table now rather than on the first Encode.
  UnicodeTables::Get();
  return absl::OkStatus();
}

std::vector<std::string> Tokenizer::PreTokenize(std::string_view text) const {
  return pre_tokenizer_->Split(text);
}

}  // namespace strata::text
