#!/bin/bash
# Converts std::mutex / std::lock_guard / std::unique_lock / std::condition_variable
# in the tree to the annotated ublk::Mutex / ublk::MutexLock / ublk::CondVar
# (ublk/mutex.h), so clang's -Wthread-safety checks every ABSL_GUARDED_BY.
# Mechanical and idempotent: re-run it after a merge brings in new std::mutex
# code, then build with `make thread-safety-check`, which reports what a regex
# cannot fix (a predicate lambda reading guarded state, a helper that needs
# ABSL_EXCLUSIVE_LOCKS_REQUIRED).
# Usage: scripts/convert-mutex.sh [FILE...]   (default: every .h/.cc under ublk csi tests)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -eq 0 ]; then
  mapfile -t files < <(git ls-files 'ublk/*.h' 'ublk/*.cc' 'csi/*.h' 'csi/*.cc' 'tests/*.h' 'tests/*.cc' |
                       grep -v '^ublk/mutex\.h$')
else
  files=("$@")
fi
for f in "${files[@]}"; do
  [ -f "$f" ] || continue
  grep -qE 'std::(mutex|lock_guard|unique_lock|condition_variable)' "$f" || continue
  perl -0pi -e '
    # Comments that explained why std::mutex was used instead of absl::Mutex
    # (ublk/mutex.h says it once now).
    s{^([ \t]*)// std::mutex, not absl::Mutex:[^\n]*,\n[ \t]*// and ([^\n]*)\n}{$1// \u$2\n}mg;
    s{^[ \t]*// std::mutex, not absl::Mutex:[^\n]*\n(?:[ \t]*// [^\n]*(?:TSan|absl::Mutex|fake_clock\.h)[^\n]*\n)*}{}mg;
    s{(std::mutex \w+;)\s*// not absl::Mutex: see worker\.h}{$1}g;
    s{; std::mutex \(not absl::Mutex\) so TSan sees it\.}{.}g;
    # std::lock_guard<std::mutex> l(mu_);  -> ublk::MutexLock l(&mu_);
    s/std::(?:lock_guard|unique_lock)<std::mutex>\s+(\w+)\(([^;()]*(?:\([^;()]*\))?[^;()]*)\);/ublk::MutexLock $1(&$2);/g;
    s/std::unique_lock<std::mutex>/ublk::MutexLock/g;
    s/std::condition_variable\b/ublk::CondVar/g;
    s/\bstd::mutex\b/ublk::Mutex/g;
    s/\.notify_all\(\)/.NotifyAll()/g;
    s/\.notify_one\(\)/.NotifyOne()/g;
    s/\.wait_until\(/.WaitUntil(/g;
    s/\.wait_for\(/.WaitFor(/g;
    s/\b(cv\w*|\w*_cv_?)\.wait\(/$1.Wait(/g;
    s/\block\.unlock\(\)/lock.Unlock()/g;
    s/\block\.lock\(\)/lock.Lock()/g;
  ' "$f"
  # The include: ublk/mutex.h replaces <mutex> and <condition_variable>; it
  # goes in sorted order among the project includes (after a .cc file's own
  # header, which comes first).
  if grep -q 'ublk::\(Mutex\|CondVar\)' "$f"; then
    perl -0pi -e 's/^#include <(?:mutex|condition_variable)>\n//mg' "$f"
    grep -q '#include "ublk/mutex.h"' "$f" || perl -0pi -e '
      my $inc = "#include \"ublk/mutex.h\"\n";
      my @lines = split /^/m;
      my ($own, $before, $last) = (-1, -1, -1);
      for my $i (0 .. $#lines) {
        next unless $lines[$i] =~ /^#include "([^"]+)"/;
        my $path = $1;
        if ($own < 0 && $last < 0 && !grep { /^#include </ } @lines[0 .. $i]) { $own = $i; next; }
        $last = $i;
        $before = $i if $before < 0 && $path gt "ublk/mutex.h";
      }
      if ($before >= 0) { splice @lines, $before, 0, $inc; }
      elsif ($last >= 0) { splice @lines, $last + 1, 0, $inc; }
      elsif ($own >= 0) { splice @lines, $own + 1, 0, "\n", $inc; }
      else { for my $i (0 .. $#lines) { if ($lines[$i] =~ /^#pragma once/) { splice @lines, $i + 1, 0, "\n", $inc; last; } } }
      $_ = join "", @lines;
    ' "$f"
  fi
  echo "converted $f"
done
