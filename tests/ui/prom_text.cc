#include "tests/ui/prom_text.h"

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "gtest/gtest.h"

namespace strata::testkit {
namespace {

bool IsNameChar(char c, bool first) {
  return std::isalpha(static_cast<unsigned char>(c)) || c == '_' || c == ':' ||
         (!first && std::isdigit(static_cast<unsigned char>(c)));
}

// Parses one sample line; false when malformed.
bool ParseSample(const std::string& line, PromSample* out) {
  size_t i = 0;
  while (i < line.size() && IsNameChar(line[i], i == 0)) ++i;
  if (i == 0) return false;
  out->name = line.substr(0, i);
  if (i < line.size() && line[i] == '{') {
    ++i;
    while (i < line.size() && line[i] != '}') {
      size_t start = i;
      while (i < line.size() && IsNameChar(line[i], i == start)) ++i;
      if (i == start || i + 1 >= line.size() || line[i] != '=' || line[i + 1] != '"') return false;
      const std::string key = line.substr(start, i - start);
      i += 2;
      std::string value;
      for (;; ++i) {
        if (i >= line.size()) return false;
        if (line[i] == '"') break;
        if (line[i] == '\\') {
          if (++i >= line.size()) return false;
          if (line[i] == 'n') {
            value += '\n';
          } else if (line[i] == '\\' || line[i] == '"') {
            value += line[i];
          } else {
            return false;
          }
        } else {
          value += line[i];
        }
      }
      ++i;  // closing quote
      out->labels[key] = value;
      if (i < line.size() && line[i] == ',') ++i;
    }
    if (i >= line.size()) return false;
    ++i;  // '}'
  }
  if (i >= line.size() || line[i] != ' ') return false;
  const std::string number = line.substr(i + 1);
  if (number == "+Inf") {
    out->value = HUGE_VAL;
    return true;
  }
  if (number == "-Inf") {
    out->value = -HUGE_VAL;
    return true;
  }
  if (number == "NaN") {
    out->value = NAN;
    return true;
  }
  char* end = nullptr;
  out->value = std::strtod(number.c_str(), &end);
  return !number.empty() && end == number.c_str() + number.size();
}

bool Includes(const std::map<std::string, std::string>& have,
              const std::map<std::string, std::string>& want) {
  for (const auto& [k, v] : want) {
    auto it = have.find(k);
    if (it == have.end() || it->second != v) return false;
  }
  return true;
}

}  // namespace

PromText ParsePromText(const std::string& text) {
  PromText out;
  std::istringstream in(text);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::istringstream words(line);
      std::string hash, kind, name;
      words >> hash >> kind >> name;
      std::string rest;
      std::getline(words, rest);
      if (!rest.empty() && rest[0] == ' ') rest.erase(0, 1);
      if (kind == "TYPE") {
        out.types[name] = rest;
      } else if (kind == "HELP") {
        out.help[name] = rest;
      }
      continue;
    }
    PromSample s;
    if (!ParseSample(line, &s)) {
      ADD_FAILURE() << "line " << n << " is not a valid sample: " << line;
      continue;
    }
    out.samples.push_back(std::move(s));
  }
  return out;
}

std::optional<double> PromText::Get(const std::string& name,
                                    const std::map<std::string, std::string>& labels) const {
  for (const PromSample& s : samples) {
    if (s.name == name && s.labels == labels) return s.value;
  }
  return std::nullopt;
}

std::vector<PromSample> PromText::All(const std::string& name,
                                      const std::map<std::string, std::string>& labels) const {
  std::vector<PromSample> out;
  for (const PromSample& s : samples) {
    if (s.name == name && Includes(s.labels, labels)) out.push_back(s);
  }
  return out;
}

}  // namespace strata::testkit
