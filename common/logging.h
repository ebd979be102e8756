// Minimal leveled logging to stderr and CHECK for broken internal invariants (never for input).
#pragma once

#include <sstream>
#include <string>

namespace strata {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// Messages below this level are dropped. Default kInfo; STRATA_LOG_LEVEL=debug|info|warning|error.
LogLevel MinLogLevel();
void SetMinLogLevel(LogLevel level);

namespace internal {

class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line, bool fatal = false);
  ~LogMessage();
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  bool fatal_;
  std::ostringstream stream_;
};

// Swallows the stream expression when the level is disabled.
struct LogVoidify {
  void operator&(std::ostream&) {}
};

}  // namespace internal
}  // namespace strata

#define STRATA_LOG(level)                                                                    \
  (::strata::LogLevel::k##level < ::strata::MinLogLevel())                                   \
      ? (void)0                                                                              \
      : ::strata::internal::LogVoidify() &                                                   \
            ::strata::internal::LogMessage(::strata::LogLevel::k##level, __FILE__, __LINE__) \
                .stream()

#define STRATA_CHECK(cond)                                                         \
  (cond) ? (void)0                                                                 \
         : ::strata::internal::LogVoidify() &                                      \
               ::strata::internal::LogMessage(                                     \
                   ::strata::LogLevel::kError, __FILE__, __LINE__, /*fatal=*/true) \
                       .stream()                                                   \
                   << "Check failed: " #cond " "
