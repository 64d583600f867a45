// Test helpers: run a program and capture its output; a temp dir that removes
// itself; a tiny HTTP GET client. Used by tests that drive the real binaries.
#pragma once

#include <string>
#include <vector>

namespace ublk_test {

struct RunResult {
  int exit_code = -1;  // -signal when killed by a signal
  std::string output;  // stdout and stderr, interleaved
};

// Runs argv[0] with args to completion (a timeout kills it) and captures output.
RunResult Run(const std::vector<std::string>& argv, int timeout_sec = 30);

// A started child process with its combined output going to a file.
class Child {
 public:
  explicit Child(const std::vector<std::string>& argv, const std::string& log_path);
  ~Child();
  int pid() const { return pid_; }
  bool Alive();
  // Sends `sig` and waits up to timeout; returns the exit code or -signal.
  int Stop(int sig, int timeout_sec = 20);
  std::string Log() const;

 private:
  int pid_ = -1;
  int status_ = -1;
  bool reaped_ = false;
  std::string log_path_;
};

class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

bool WaitForPath(const std::string& path, int timeout_ms = 10000);

// A TCP port on 127.0.0.1 that was free a moment ago (bound, then closed).
int FreePort();

// A connected socket to 127.0.0.1:port, or -1 (errno set).
int ConnectTcp(int port);

// Returns "<status code> <body>" or "error: ..." for GET http://127.0.0.1:port/path.
std::string HttpGet(int port, const std::string& path);

std::string BuildDir();

}  // namespace ublk_test
