#include "coordinator/server.h"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "common/status.h"
#include "common/strings.h"
#include "grpcpp/health_check_service_interface.h"

namespace strata::coordinator {
namespace {

absl::Status BadAddress(const std::string& address, std::string_view why) {
  return absl::InvalidArgumentError(StrCat("bad address '", address, "': ", why));
}

}  // namespace

std::string HostPort::ToString() const {
  if (host.find(':') != std::string::npos) return StrCat("[", host, "]:", port);
  return StrCat(host, ":", port);
}

absl::StatusOr<HostPort> ParseHostPort(const std::string& address) {
  HostPort out;
  std::string port_text;
  if (!address.empty() && address.front() == '[') {
    const size_t close = address.find(']');
    if (close == std::string::npos || close + 1 >= address.size() || address[close + 1] != ':') {
      return BadAddress(address, "expected [IPV6]:PORT");
    }
    out.host = address.substr(1, close - 1);
    port_text = address.substr(close + 2);
  } else {
    const size_t colon = address.rfind(':');
    if (colon == std::string::npos) return BadAddress(address, "expected HOST:PORT");
    out.host = address.substr(0, colon);
    port_text = address.substr(colon + 1);
    if (out.host.find(':') != std::string::npos) {
      return BadAddress(address, "put an IPv6 host in brackets: [::1]:PORT");
    }
  }
  if (out.host.empty()) return BadAddress(address, "the host is empty (use 0.0.0.0 for all)");
  const bool digits = !port_text.empty() && port_text.size() <= 5 &&
                      std::all_of(port_text.begin(), port_text.end(), [](char c) {
                        return absl::ascii_isdigit(c);
                      });
  if (!digits || !absl::SimpleAtoi(port_text, &out.port) || out.port > 65535) {
    return BadAddress(address, "the port must be a number in 0..65535");
  }
  return out;
}

absl::Status ProbeBind(const HostPort& address) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  const std::string port = StrCat(address.port);
  if (int rc = getaddrinfo(address.host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    return absl::UnavailableError(
        StrCat("cannot resolve host '", address.host, "': ", gai_strerror(rc)));
  }
  absl::Status status = absl::OkStatus();
  const int fd = socket(found->ai_family, found->ai_socktype, found->ai_protocol);
  if (fd < 0) {
    status = absl::UnavailableError(StrCat("cannot create a socket: ", std::strerror(errno)));
  } else {
    int yes = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    if (bind(fd, found->ai_addr, found->ai_addrlen) != 0) {
      status = absl::UnavailableError(
          StrCat("cannot listen on ", address.ToString(), ": ", std::strerror(errno)));
    }
    close(fd);
  }
  freeaddrinfo(found);
  return status;
}

absl::StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Start(
    CoordinatorOptions options) {
  ASSIGN_OR_RETURN(HostPort grpc_address, ParseHostPort(options.grpc_address));
  HostPort http_address;
  if (!options.http_address.empty()) {
    ASSIGN_OR_RETURN(http_address, ParseHostPort(options.http_address));
  }
  // Probe first for a clean one-line reason; gRPC's own bind errors go to its log.
  RETURN_IF_ERROR(ProbeBind(grpc_address));
  if (!options.http_address.empty()) RETURN_IF_ERROR(ProbeBind(http_address));

  std::unique_ptr<CoordinatorServer> s(new CoordinatorServer());
  s->registry_ = std::make_unique<Registry>(options.registry, options.clock);
  s->service_ = std::make_unique<CoordinatorService>(s->registry_.get(), options.router);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  // Without this gRPC sets SO_REUSEPORT and a second coordinator would share the port silently.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  int port = 0;
  builder.AddListeningPort(grpc_address.ToString(), grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(s->service_.get());
  s->grpc_ = builder.BuildAndStart();
  if (s->grpc_ == nullptr || port == 0) {
    s->grpc_.reset();
    return absl::UnavailableError(
        StrCat("cannot listen for gRPC on ", grpc_address.ToString(), " (address in use?)"));
  }
  s->grpc_address_ = {grpc_address.host, port};
  s->grpc_->GetHealthCheckService()->SetServingStatus("strata.v1.Coordinator", true);

  if (!options.http_address.empty()) {
    ASSIGN_OR_RETURN(s->http_,
                     HttpServer::Start(
                         http_address.host, http_address.port, s->registry_.get(), options.router));
    s->http_address_ = {http_address.host, s->http_->port()};
  }
  return s;
}

CoordinatorServer::~CoordinatorServer() { Shutdown(); }

void CoordinatorServer::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  if (http_) http_->Stop();
  if (grpc_) {
    grpc_->GetHealthCheckService()->Shutdown();
    grpc_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }
}

}  // namespace strata::coordinator
