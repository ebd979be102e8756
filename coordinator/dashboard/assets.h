// The dashboard's static files, embedded into the binary at build time (embed.cmake), so the
// coordinator serves its page from any working directory and without network access.
#pragma once

#include <span>
#include <string_view>

namespace strata::coordinator::dashboard {

struct Asset {
  std::string_view url;           // e.g. "/", "/app.js", "/chart.js"
  std::string_view content_type;  // e.g. "text/html; charset=utf-8"
  std::string_view data;
};

// Every embedded file. "/chart.js" (Chart.js from Debian's libjs-chart.js) is present only when
// the package was installed at configure time; the HTTP server then falls back to reading it from
// /usr/share/javascript/chart.js/ at run time.
std::span<const Asset> Assets();

}  // namespace strata::coordinator::dashboard
