#!/bin/bash
# bench/selftest-server.sh: builds the kernel's own selftest ublk server
# (tools/testing/selftests/ublk, "kublk") as a baseline for `make bench`'s
# null rows and, with its loop target, the tmpfs and ext4 rows
# (BENCH_MODES="... selftest_zero_copy selftest_user_copy ...",
# bench/guest.sh). Nothing of it is vendored: the sources come from Debian's
# newest linux-source-N.M package (trixie-backports) and liburing 2.9 from
# trixie (bookworm's liburing 2.3 lacks what kublk uses; with trixie's
# linux-libc-dev under the kernel's own uapi headers), all fetched with a
# private apt configuration under DIR/bench-cache/selftest; the machine's own
# sources and packages stay untouched. liburing is linked statically, so the
# binary runs in the bookworm guest.
#
# usage: bench/selftest-server.sh [--build-dir DIR]
# Prints the path of the binary (DIR/bench-cache/selftest/kublk); exits 2
# when the sources cannot be fetched or the build fails. A second run reuses
# the binary when the source package is unchanged.
set -uo pipefail

here=$(dirname "$(realpath "$0")")
root=$(realpath "$here/..")
build_dir=$root/build
while [ $# -gt 0 ]; do
  case $1 in
    --build-dir) build_dir=${2:?}; shift 2 ;;
    --build-dir=*) build_dir=${1#*=}; shift ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "selftest-server: unknown argument $1" >&2; exit 2 ;;
  esac
done
E2E_BUILD_DIR=$(realpath -m "$build_dir")
E2E_WORK_DIR=$E2E_BUILD_DIR
# shellcheck source=SCRIPTDIR/../tests/e2e/lib/host.sh
. "$root/tests/e2e/lib/host.sh"

cache=$E2E_BUILD_DIR/bench-cache/selftest
out=$cache/kublk
e2e_private_apt "$cache" trixie trixie-backports
opts=("${E2E_APT_OPTS[@]}" -o Dir::State::status=/dev/null)

# The newest kernel source package, e.g. linux-source-7.3.
newest_source() {
  apt-cache "${opts[@]}" pkgnames linux-source- 2>/dev/null | grep -E '^linux-source-[0-9]+\.[0-9]+$' \
    | sort -V | tail -1
}
src_pkg=$(newest_source)
if [ -z "$src_pkg" ]; then
  e2e_log "apt-get update (trixie, trixie-backports; private lists in $cache)"
  apt-get "${opts[@]}" update -qq >&2 || e2e_die "apt-get update of trixie/trixie-backports failed"
  src_pkg=$(newest_source)
fi
[ -n "$src_pkg" ] || e2e_die "no linux-source-N.M package in trixie-backports"
# newest_version PKG: the newest version of PKG in the private lists.
newest_version() {
  apt-cache "${opts[@]}" show "$1" 2>/dev/null | awk '/^Version:/ {print $2}' | sort -V | tail -1
}
# candidate PKG: the version apt-get download fetches.
candidate() {
  apt-cache "${opts[@]}" policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}'
}
src_ver=$(newest_version "$src_pkg")
# A new kernel source, liburing or uapi header package rebuilds the server.
stamp="$src_pkg $src_ver liburing-dev $(candidate liburing-dev) linux-libc-dev $(candidate linux-libc-dev)"
if [ -x "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "$out"
  exit 0
fi

deb_dir=$cache/debs
rm -rf "$deb_dir" "$cache/src" "$cache/root" "$cache/include"
mkdir -p "$deb_dir" "$cache/src" "$cache/root"
e2e_log "downloading $src_pkg $src_ver, liburing-dev and linux-libc-dev (trixie)"
(cd "$deb_dir" && apt-get "${opts[@]}" download -q "$src_pkg=$src_ver" liburing-dev linux-libc-dev 2>&1 \
  | grep -v 'Download is performed unsandboxed' >&2)
for p in "$src_pkg" liburing-dev linux-libc-dev; do
  ls "$deb_dir/${p}_"*.deb >/dev/null 2>&1 || e2e_die "apt-get download $p failed"
done
for p in liburing-dev linux-libc-dev; do
  dpkg-deb -x "$deb_dir/${p}"_*.deb "$cache/root" || e2e_die "unpack $p"
done
tarball=$(dpkg-deb -c "$deb_dir/${src_pkg}"_*.deb | awk '{print $NF}' | grep -E 'linux-source-.*\.tar\.xz$')
[ -n "$tarball" ] || e2e_die "$src_pkg has no source tarball"
top=$(basename "$tarball" .tar.xz)
dpkg-deb --fsys-tarfile "$deb_dir/${src_pkg}"_*.deb | tar -xO "$tarball" \
  | tar -xJ -C "$cache/src" --wildcards "$top/tools/testing/selftests/ublk/*" \
      "$top/tools/testing/selftests/kselftest*" "$top/tools/include/*" \
      "$top/include/uapi/linux/ublk_cmd.h" "$top/include/uapi/linux/fs.h" \
      "$top/include/uapi/linux/io_uring.h" "$top/include/uapi/linux/io_uring/*" \
  || e2e_die "unpack the ublk selftests from $tarball"
src=$cache/src/$top
# The ublk and io_uring uapi headers of the same kernel over trixie's.
inc=$cache/root/usr/include
cp -r "$src/include/uapi/linux" "$inc/"
e2e_log "building kublk from $src_pkg $src_ver"
# Every .c but the stand-alone metadata_size utility (the selftests' Makefile).
srcs=()
for f in "$src"/tools/testing/selftests/ublk/*.c; do
  [ "$(basename "$f")" = metadata_size.c ] || srcs+=("$f")
done
(cd "$src/tools/testing/selftests/ublk" && \
  gcc -O2 -D_GNU_SOURCE -w -I"$inc" -I"$inc/x86_64-linux-gnu" -I../../../include \
    -o "$out.new" "${srcs[@]}" "$cache/root/usr/lib/x86_64-linux-gnu/liburing.a" -lpthread -lm) >&2 \
  || e2e_die "building kublk failed"
mv "$out.new" "$out"
echo "$stamp" > "$out.stamp"
rm -rf "$deb_dir"
echo "$out"
