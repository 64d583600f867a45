#include "tests/testing/subprocess.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "ublk/errno.h"

namespace ublk_test {

namespace {

pid_t Spawn(const std::vector<std::string>& argv, int out_fd) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(out_fd, 1);
    dup2(out_fd, 2);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  return pid;
}

int Decode(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return -1;
}

bool WaitPid(pid_t pid, int* status, int timeout_ms) {
  for (int waited = 0; waited <= timeout_ms; waited += 10) {
    if (waitpid(pid, status, WNOHANG) == pid) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::string BuildDir() { return UBLK_CSI_BUILD_DIR; }

RunResult Run(const std::vector<std::string>& argv, int timeout_sec) {
  TempDir tmp;
  std::string log = tmp.path() + "/out";
  int fd = open(log.c_str(), O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0600);
  pid_t pid = Spawn(argv, fd);
  close(fd);
  RunResult r;
  int status = 0;
  if (!WaitPid(pid, &status, timeout_sec * 1000)) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
  }
  r.exit_code = Decode(status);
  r.output = ReadFile(log);
  return r;
}

Child::Child(const std::vector<std::string>& argv, const std::string& log_path)
    : log_path_(log_path) {
  int fd = open(log_path.c_str(), O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0600);
  pid_ = Spawn(argv, fd);
  close(fd);
}

Child::~Child() {
  if (!reaped_ && pid_ > 0) Stop(SIGKILL, 5);
}

bool Child::Alive() {
  if (reaped_) return false;
  if (waitpid(pid_, &status_, WNOHANG) == pid_) {
    reaped_ = true;
    return false;
  }
  return true;
}

int Child::Stop(int sig, int timeout_sec) {
  if (!reaped_) {
    kill(pid_, sig);
    if (!WaitPid(pid_, &status_, timeout_sec * 1000)) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status_, 0);
    }
    reaped_ = true;
  }
  return Decode(status_);
}

std::string Child::Log() const { return ReadFile(log_path_); }

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "ublk-csi-test.XXXXXX").string();
  char* p = mkdtemp(tmpl.data());
  path_ = p ? p : "";
}

TempDir::~TempDir() {
  std::error_code ec;
  if (!path_.empty()) std::filesystem::remove_all(path_, ec);
}

bool WaitForPath(const std::string& path, int timeout_ms) {
  for (int waited = 0; waited <= timeout_ms; waited += 10) {
    struct stat st;
    if (stat(path.c_str(), &st) == 0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

int ConnectTcp(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    const int err = errno;
    close(fd);
    errno = err;
    return -1;
  }
  return fd;
}

std::string HttpGet(int port, const std::string& path) {
  int fd = ConnectTcp(port);
  if (fd < 0) return std::string("error: connect: ") + ublk::Errno(errno);
  std::string req = "GET " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    close(fd);
    return "error: write";
  }
  std::string resp;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) resp.append(buf, static_cast<size_t>(n));
  close(fd);
  // "HTTP/1.1 200 OK\r\n...\r\n\r\nbody" -> "200 body"
  size_t sp = resp.find(' ');
  size_t body = resp.find("\r\n\r\n");
  if (sp == std::string::npos || body == std::string::npos) return "error: bad response";
  return resp.substr(sp + 1, 3) + " " + resp.substr(body + 4);
}

}  // namespace ublk_test
