// A strict reader of the Prometheus text exposition format (version 0.0.4) for tests: every line
// must be a comment (# HELP / # TYPE) or a sample `name{label="value",...} number`, label values
// unescaped. Fails the test (ADD_FAILURE) on anything else.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace strata::testkit {

struct PromSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct PromText {
  std::vector<PromSample> samples;
  std::map<std::string, std::string> types;  // family name -> counter/gauge/histogram/...
  std::map<std::string, std::string> help;

  // The value of the one sample with this name and exactly these labels.
  std::optional<double> Get(const std::string& name,
                            const std::map<std::string, std::string>& labels = {}) const;
  // Samples of `name` whose labels include `labels`.
  std::vector<PromSample> All(const std::string& name,
                              const std::map<std::string, std::string>& labels = {}) const;
};

PromText ParsePromText(const std::string& text);

}  // namespace strata::testkit
