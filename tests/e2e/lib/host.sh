# Host side of the e2e harness: sourced by tests/e2e/run.sh and
# tests/e2e/run-in-guest.sh. Needs bash, root (apt, qemu 9p of /).
#
# Callers set E2E_BUILD_DIR (absolute) and E2E_KERNEL_SERIES (e.g. 6.12) first.
# Environment knobs:
#   E2E_APT_UPDATE=1   run apt-get update before resolving the kernel
#   E2E_ACCEL=kvm      try KVM instead of TCG (the watchdog still applies)
#   E2E_MEM / E2E_SMP  guest memory (MiB, default 2048) and vCPUs (default 2)
#   E2E_APPEND         extra guest kernel command line
#   E2E_QEMU           the qemu binary (default qemu-system-x86_64)
#   E2E_WORK_DIR       where e2e-cache/ and e2e-logs/ go (default: the build
#                      dir), e.g. to test another build dir without writing to it
#   E2E_NET_TAP        a host tap device: the guest gets a virtio NIC on it
#                      (default: no NIC; tests/e2e/k8s uses one)

E2E_DIR=$(dirname "$(realpath "${BASH_SOURCE[0]}")")/..
E2E_DIR=$(realpath "$E2E_DIR")
E2E_SRC_DIR=$(realpath "$E2E_DIR/../..")

E2E_WORK_DIR=$(realpath -m "${E2E_WORK_DIR:-$E2E_BUILD_DIR}")

e2e_log() { echo "e2e: $*" >&2; }
e2e_die() { echo "e2e: error: $*" >&2; exit 2; }
e2e_now() { date +%s%N; }
# e2e_secs START_NS [END_NS]: elapsed seconds with one decimal.
e2e_secs() {
  local end=${2:-$(e2e_now)}
  local ds=$(( (end - $1) / 100000000 ))
  echo "$((ds / 10)).$((ds % 10))"
}

E2E_APT_UPDATED=0
e2e_apt_update() {
  [ "$E2E_APT_UPDATED" = 1 ] && return 0
  e2e_log "apt-get update"
  apt-get update -qq >&2 || e2e_log "apt-get update failed (continuing with the current lists)"
  E2E_APT_UPDATED=1
}

# Installs the host tools the harness and the scenarios use, when missing.
e2e_ensure_packages() {
  local want="qemu-system-x86 busybox-static kmod xz-utils zstd cpio e2fsprogs xfsprogs fio util-linux"
  local missing="" p
  for p in $want; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
      || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  [ "$(id -u)" = 0 ] || e2e_die "missing packages:$missing (run as root to install them)"
  e2e_apt_update
  e2e_log "installing:$missing"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >&2 \
    || e2e_die "apt-get install$missing failed"
}

# Prints the versioned image package behind the meta package linux-image-SERIES-amd64.
e2e_resolve_kernel_pkg() {
  apt-cache depends "linux-image-$1-amd64" 2>/dev/null \
    | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
}

# e2e_kernel_series_ok SERIES: the series this harness knows how to fetch.
#   6.12  linux-image-6.12-amd64 from this machine's apt sources (bookworm-security)
#   7     linux-image-amd64 of trixie-backports (a 7.x kernel), through a
#         private apt source list on the Debian mirror this machine uses
e2e_kernel_series_ok() {
  case $1 in 7) return 0 ;; [0-9]*.[0-9]*) return 0 ;; esac
  return 1
}

# Makes sure the cache under $E2E_WORK_DIR/e2e-cache holds the current kernel of
# $E2E_KERNEL_SERIES and an initramfs built by the current guest-setup scripts.
# Sets E2E_KVER, E2E_VMLINUZ, E2E_INITRD.
e2e_ensure_kernel() {
  e2e_kernel_series_ok "$E2E_KERNEL_SERIES" \
    || e2e_die "unknown kernel series '$E2E_KERNEL_SERIES' (known: 6.12, 7)"
  if [ "$E2E_KERNEL_SERIES" = 7 ]; then
    e2e_ensure_kernel_backports trixie-backports 7
  else
    e2e_ensure_kernel_series
  fi
}

e2e_ensure_kernel_series() {
  local cache=$E2E_WORK_DIR/e2e-cache series=$E2E_KERNEL_SERIES pkg deb kdir
  mkdir -p "$cache/debs"
  [ "${E2E_APT_UPDATE:-0}" = 1 ] && e2e_apt_update
  pkg=$(e2e_resolve_kernel_pkg "$series")
  if [ -z "$pkg" ]; then
    e2e_apt_update
    pkg=$(e2e_resolve_kernel_pkg "$series")
  fi
  if [ -z "$pkg" ]; then
    # Offline and no package lists: fall back to a kernel cached earlier.
    kdir=$(ls -d "$cache"/kernel-linux-image-"$series".*/ 2>/dev/null | sort -V | tail -1)
    [ -n "$kdir" ] || e2e_die "cannot resolve linux-image-$series-amd64 with apt and no kernel is cached in $cache"
    kdir=${kdir%/}
    e2e_log "cannot resolve linux-image-$series-amd64; using cached $(basename "$kdir")"
  else
    deb=$(ls "$cache/debs/${pkg}"_*.deb 2>/dev/null | sort -V | tail -1)
    if [ -z "$deb" ]; then
      e2e_log "downloading $pkg"
      if ! (cd "$cache/debs" && apt-get download -q "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2); then :; fi
      deb=$(ls "$cache/debs/${pkg}"_*.deb 2>/dev/null | sort -V | tail -1)
      if [ -z "$deb" ]; then
        # Stale package lists name a version the mirror no longer has.
        e2e_apt_update
        pkg=$(e2e_resolve_kernel_pkg "$series")
        (cd "$cache/debs" && apt-get download -q "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2) || true
        deb=$(ls "$cache/debs/${pkg}"_*.deb 2>/dev/null | sort -V | tail -1)
      fi
      [ -n "$deb" ] || e2e_die "apt-get download $pkg failed"
      # Keep only the current kernel package.
      find "$cache/debs" -name 'linux-image-*.deb' ! -path "$deb" -delete
    fi
    kdir=$cache/kernel-$(basename "$deb" .deb)
  fi
  e2e_build_guest_image "$kdir" "$cache" ${deb:+"$deb"}
}

# Prints the URI of the Debian mirror this machine's apt uses for its release
# suite (not -security, not third-party repositories). E2E_DEBIAN_MIRROR overrides.
e2e_debian_mirror() {
  if [ -n "${E2E_DEBIAN_MIRROR:-}" ]; then echo "$E2E_DEBIAN_MIRROR"; return; fi
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    # deb [options] URI SUITE COMPONENTS...
    sed -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" && $3 !~ /-/ && $2 ~ /debian\/?$/ {print $2; exit}'
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # deb822 stanzas, separated by blank lines.
    awk 'function flush() { if (t ~ /(^| )deb( |$)/ && s ~ /(^| )[a-z]+( |$)/ && u ~ /debian\/?$/ && e != "no") print u; t = s = u = e = "" }
         /^[ \t]*$/ { flush(); next }
         tolower($1) == "types:"   { $1 = ""; t = $0 }
         tolower($1) == "suites:"  { $1 = ""; s = $0 }
         tolower($1) == "uris:"    { u = $2 }
         tolower($1) == "enabled:" { e = tolower($2) }
         END { flush() }' "$f"
  done
}

# e2e_private_apt CACHE SUITE...: an apt configuration of its own under CACHE
# (sources.list with SUITE... main on this machine's Debian mirror, lists,
# archives), so that packages of another release can be looked up and
# downloaded while the machine's own sources stay untouched. Sets
# E2E_APT_OPTS (apt-get/apt-cache -o options) and E2E_APT_MIRROR (the
# mirror's URI); the caller runs apt-get "${E2E_APT_OPTS[@]}" update when a
# lookup finds nothing.
e2e_private_apt() {
  local cache=$1 suite
  shift
  mkdir -p "$cache/lists/partial" "$cache/apt/archives/partial"
  E2E_APT_MIRROR=$(e2e_debian_mirror | head -1)
  [ -n "$E2E_APT_MIRROR" ] || e2e_die "no Debian mirror found in /etc/apt/sources.list*; set E2E_DEBIAN_MIRROR"
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  for suite in "$@"; do
    echo "deb [signed-by=$keyring] $E2E_APT_MIRROR $suite main"
  done > "$cache/sources.list.new"
  if ! cmp -s "$cache/sources.list.new" "$cache/sources.list"; then
    mv "$cache/sources.list.new" "$cache/sources.list"
    rm -rf "$cache/lists"; mkdir -p "$cache/lists/partial"
  else
    rm -f "$cache/sources.list.new"
  fi
  E2E_APT_OPTS=(-o "Dir::Etc::SourceList=$cache/sources.list" -o Dir::Etc::SourceParts=/dev/null
                -o "Dir::State::Lists=$cache/lists" -o "Dir::Cache=$cache/apt")
}

# e2e_ensure_kernel_backports SUITE SERIES: the kernel behind linux-image-amd64
# in SUITE (Debian's split packages: linux-binary-KVER has vmlinuz under
# usr/lib/modules/KVER, linux-modules-KVER the modules, linux-base-KVER the
# config), fetched with a private apt configuration under
# e2e-cache/SUITE/ so the machine's own sources stay untouched.
e2e_ensure_kernel_backports() {
  local suite=$1 series=$2
  local cache=$E2E_WORK_DIR/e2e-cache/$suite kver kdir p debs=() d
  e2e_private_apt "$cache" "$suite"
  local opts=("${E2E_APT_OPTS[@]}")
  mkdir -p "$cache/debs"
  resolve() {
    apt-cache "${opts[@]}" depends linux-image-amd64 2>/dev/null \
      | awk '/Depends: linux-image-[0-9]/ {sub("^linux-image-", "", $2); print $2; exit}'
  }
  update() {
    e2e_log "apt-get update ($suite on $E2E_APT_MIRROR, private lists in $cache)"
    apt-get "${opts[@]}" update -qq >&2 || e2e_log "apt-get update of $suite failed"
  }
  [ "${E2E_APT_UPDATE:-0}" = 1 ] && update
  kver=$(resolve)
  if [ -z "$kver" ]; then update; kver=$(resolve); fi
  if [ -z "$kver" ]; then
    kdir=$(ls -d "$cache"/kernel-"$series".*/ 2>/dev/null | sort -V | tail -1)
    [ -n "$kdir" ] || e2e_die "cannot resolve linux-image-amd64 in $suite and no kernel is cached in $cache"
    kdir=${kdir%/}
    e2e_log "cannot resolve linux-image-amd64 in $suite; using cached $(basename "$kdir")"
    e2e_build_guest_image "$kdir" "$cache"
    return
  fi
  case $kver in "$series".*) ;; *) e2e_die "$suite offers kernel $kver, not a $series.x one" ;; esac
  fetch() {
    local p
    for p in linux-binary linux-modules linux-base; do
      ls "$cache/debs/$p-${kver}"_*.deb >/dev/null 2>&1 && continue
      e2e_log "downloading $p-$kver"
      (cd "$cache/debs" && apt-get "${opts[@]}" download -q "$p-$kver" 2>&1 \
        | grep -v '^W: Download is performed unsandboxed' >&2) || true
    done
  }
  fetch
  for p in linux-binary linux-modules linux-base; do
    ls "$cache/debs/$p-${kver}"_*.deb >/dev/null 2>&1 || { update; fetch; break; }
  done
  for p in linux-binary linux-modules linux-base; do
    d=$(ls "$cache/debs/$p-${kver}"_*.deb 2>/dev/null | sort -V | tail -1)
    [ -n "$d" ] || e2e_die "apt-get download $p-$kver from $suite failed"
    debs+=("$d")
  done
  # Keep only the current kernel's packages.
  for d in "$cache"/debs/*.deb; do
    case " ${debs[*]} " in *" $d "*) ;; *) rm -f "$d" ;; esac
  done
  kdir=$cache/kernel-$kver
  e2e_build_guest_image "$kdir" "$cache" "${debs[@]}"
}

# e2e_build_guest_image KDIR CACHE [DEB...]: makes sure KDIR holds vmlinuz,
# config, kver and an initramfs built by the current guest-setup scripts,
# unpacking DEB... (one linux-image package, or Debian's split
# binary/modules/base packages) when anything is missing; then drops other
# kernel-* dirs in CACHE. Sets E2E_KVER, E2E_VMLINUZ, E2E_INITRD.
e2e_build_guest_image() {
  local kdir=$1 cache=$2
  shift 2
  local key
  key=$(cat "$E2E_DIR/guest/init.sh" "$E2E_DIR/lib/build-initramfs.sh" | sha256sum | cut -c1-16)
  E2E_INITRD=$kdir/initramfs-$key.img
  if [ ! -f "$kdir/vmlinuz" ] || [ ! -f "$kdir/kver" ] || [ ! -f "$E2E_INITRD" ]; then
    [ $# -gt 0 ] || e2e_die "cached kernel $kdir is incomplete and apt cannot resolve a new one"
    local t0 tree kver d root vmlinuz config
    t0=$(e2e_now)
    tree=$(mktemp -d "$cache/unpack.XXXXXX")
    for d in "$@"; do
      dpkg-deb -x "$d" "$tree" || { rm -rf "$tree"; e2e_die "dpkg-deb -x $d failed"; }
    done
    # Older packages put modules under lib/modules, newer ones (7.x) under usr/lib/modules.
    root=$tree
    [ -d "$tree/lib/modules" ] || root=$tree/usr
    kver=$(ls "$root/lib/modules" 2>/dev/null | head -1)
    [ -n "$kver" ] || { rm -rf "$tree"; e2e_die "$* has no lib/modules"; }
    vmlinuz=$tree/boot/vmlinuz-$kver config=$tree/boot/config-$kver
    [ -f "$vmlinuz" ] || vmlinuz=$root/lib/modules/$kver/vmlinuz
    [ -f "$config" ] || config=$root/lib/modules/$kver/config
    [ -f "$vmlinuz" ] || { rm -rf "$tree"; e2e_die "$*: no vmlinuz for $kver"; }
    if ! grep -q '^CONFIG_BLK_DEV_UBLK=[my]' "$config"; then
      rm -rf "$tree"; e2e_die "$*: kernel $kver is built without ublk (CONFIG_BLK_DEV_UBLK)"
    fi
    depmod -b "$root" "$kver" || { rm -rf "$tree"; e2e_die "depmod -b $root $kver failed"; }
    rm -rf "$kdir"; mkdir -p "$kdir"
    cp "$vmlinuz" "$kdir/vmlinuz"
    cp "$config" "$kdir/config"
    bash "$E2E_DIR/lib/build-initramfs.sh" "$root" "$kver" "$E2E_INITRD" >&2 \
      || { rm -rf "$tree" "$kdir"; e2e_die "building the initramfs failed"; }
    echo "$kver" > "$kdir/kver"
    rm -rf "$tree"
    # Drop kernels other than this one.
    find "$cache" -maxdepth 1 -name 'kernel-*' ! -path "$kdir" -exec rm -rf {} +
    e2e_log "guest image ready in $(e2e_secs "$t0")s"
  fi
  E2E_KVER=$(cat "$kdir/kver")
  E2E_VMLINUZ=$kdir/vmlinuz
}

# A host path is visible at the same path inside the guest's chroot, except
# under the guest's own /dev, /proc, /sys, /lib/modules. Paths under /tmp, /run
# and /var/tmp (guest tmpfs) are listed by e2e_write_keep and put back.
e2e_check_visible() { # $1 = what, $2 = absolute path
  case $2/ in
    /dev/*|/proc/*|/sys/*|/lib/modules/*)
      e2e_die "$1 $2 is hidden in the guest (it mounts its own /dev, /proc, /sys, /lib/modules); use a path elsewhere" ;;
  esac
}

# e2e_write_keep SHARE PATH...: writes SHARE/keep, the directories under /tmp,
# /run or /var/tmp that the guest must keep visible (outermost ones only).
e2e_write_keep() {
  local share=$1 p q dup
  shift
  local list=()
  for p in "$@"; do
    case $p/ in /tmp/*|/run/*|/var/tmp/*) list+=("$p") ;; esac
  done
  : > "$share/keep"
  for p in "${list[@]}"; do
    dup=0
    for q in "${list[@]}"; do
      [ "$p" != "$q" ] && case $p/ in "$q"/*) dup=1 ;; esac
    done
    [ $dup = 0 ] && ! grep -qxF "$p" "$share/keep" && echo "$p" >> "$share/keep"
  done
  return 0
}

# e2e_write_job SHARE SCENARIO_NAME BOOT DATA_DISK SCRIPT [ARGS...]
# Writes SHARE/job.sh, which the guest runs chrooted in the host's root.
e2e_write_job() {
  local share=$1 name=$2 boot=$3 disk=$4 script=$5
  shift 5
  {
    echo "# generated by tests/e2e/lib/host.sh; run by the guest's /init in the chroot"
    echo "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    echo "export HOME=/tmp LC_ALL=C.UTF-8 TERM=dumb"
    printf 'export SRC_DIR=%q BUILD_DIR=%q E2E_LIB=%q\n' \
      "$E2E_SRC_DIR" "$E2E_BUILD_DIR" "$E2E_DIR/lib/guest.sh"
    printf 'export E2E_SCENARIO=%q E2E_BOOT=%q\n' "$name" "$boot"
    echo "export E2E_RESULT_DIR=/run/e2e E2E_SCRATCH=/tmp/e2e-scratch"
    if [ "$disk" = 1 ]; then echo "export E2E_DATA_DIR=/run/e2e-data"; else echo "export E2E_DATA_DIR="; fi
    echo 'mkdir -p "$E2E_SCRATCH"'
    # Written by the scenario's host-side step (e2e_prepare), if it has one.
    echo '[ -f "$E2E_RESULT_DIR/env" ] && . "$E2E_RESULT_DIR/env"'
    # On-demand settings a scenario reads, from the host's E2E_ENV
    # (whitespace-separated NAME=VALUE, e.g. E2E_ENV="N=200 ROUNDS=30").
    local kv
    for kv in ${E2E_ENV:-}; do
      [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || { echo "E2E_ENV: '$kv' is not NAME=VALUE" >&2; continue; }
      printf 'export %q\n' "$kv"
    done
    # Every log starts with the guest kernel, its GET_FEATURES and the mode the
    # engine picks there (the host prints the first boot's copy per kernel).
    echo 'echo "e2e: guest kernel $(uname -r)"'
    echo 'if [ -x "$BUILD_DIR/ublk/ublk-tool" ]; then'
    echo '  timeout 30 "$BUILD_DIR/ublk/ublk-tool" features > "$E2E_RESULT_DIR/features" 2>&1'
    echo '  sed "s/^/e2e: ublk-tool features: /" "$E2E_RESULT_DIR/features"'
    echo 'fi'
    printf 'cd %q || exit 126\n' "$E2E_SRC_DIR"
    printf 'exec /bin/bash %q' "$script"
    [ $# -gt 0 ] && printf ' %q' "$@"
    echo
  } > "$share/job.sh"
}

E2E_QEMU_PID=
e2e_kill_qemu() {
  [ -n "$E2E_QEMU_PID" ] || return 0
  kill "$E2E_QEMU_PID" 2>/dev/null
  local i
  for i in 1 2 3 4 5 6 7 8 9 10; do
    kill -0 "$E2E_QEMU_PID" 2>/dev/null || break
    sleep 0.5
  done
  kill -9 "$E2E_QEMU_PID" 2>/dev/null
}
trap 'e2e_kill_qemu' EXIT
trap 'e2e_kill_qemu; exit 130' INT TERM

# e2e_boot RUN_DIR TIMEOUT_S STREAM(0|1) DATA_DISK(0|1) UBLKS_MAX(or empty)
# Boots the guest once; it runs RUN_DIR/share/job.sh. The console goes to
# RUN_DIR/console.log (appended; streamed to stdout when STREAM=1).
# Sets E2E_GUEST_RC (the job's exit code, empty when the guest did not report
# one), E2E_BOOT_PROBLEM (empty, or why the guest was killed / died) and
# E2E_BOOT_SECS (wall time).
e2e_boot() {
  local run=$1 timeout=$2 stream=$3 disk=$4 ublks_max=$5
  local share=$run/share console=$run/console.log qerr=$run/qemu.err
  # acpi=noirq: no ACPI IRQ routing (_PRT). Under TCG on a loaded host its AML
  # loop timed out once (AE_AML_LOOP_TIMEOUT) and the boot took 60 s; the MP
  # table routes the IRQs just as well and both vCPUs stay (acpi=off loses one).
  local append="console=ttyS0 quiet loglevel=4 panic=-1 acpi=noirq ${E2E_APPEND:-}"
  # shellcheck disable=SC2054  # commas are qemu option syntax, not array separators
  local accel=(-accel tcg,thread=multi,tb-size=512 -cpu max)
  local extra=(-nic none)
  if [ -n "${E2E_NET_TAP:-}" ]; then
    # shellcheck disable=SC2054  # qemu option syntax again
    extra=(-netdev "tap,id=n0,ifname=$E2E_NET_TAP,script=no,downscript=no"
           -device virtio-net-pci,netdev=n0,mac=52:54:00:e2:e2:02)
  fi
  if [ "${E2E_ACCEL:-tcg}" = kvm ] && [ -w /dev/kvm ]; then accel=(-enable-kvm -cpu host); fi
  [ -n "$ublks_max" ] && append="$append e2e.ublks_max=$ublks_max"
  if [ "$disk" = 1 ]; then
    extra+=(-drive "file=$run/disk.img,if=virtio,cache=none,format=raw")
    append="$append e2e.disk=1"
  fi
  rm -f "$share/rc"
  : > "$qerr"
  echo "===== boot $(date -u +%FT%TZ) =====" >> "$console"
  local boot_console=$run/console.boot.log
  : > "$boot_console"

  local t0 tail_pid=
  t0=$(e2e_now)
  "${E2E_QEMU:-qemu-system-x86_64}" "${accel[@]}" -smp "${E2E_SMP:-2}" -m "${E2E_MEM:-2048}" \
    -nodefaults -no-user-config -display none -monitor none -no-reboot \
    -serial "file:$boot_console" \
    -kernel "$E2E_VMLINUZ" -initrd "$E2E_INITRD" -append "$append" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -virtfs "local,path=$share,mount_tag=e2e,security_model=none,multidevs=remap" \
    "${extra[@]}" </dev/null >"$qerr" 2>&1 &
  E2E_QEMU_PID=$!
  if [ "$stream" = 1 ]; then
    tail -n +1 -F --pid="$E2E_QEMU_PID" "$boot_console" 2>/dev/null | tr -d '\r' &
    tail_pid=$!
  fi

  E2E_BOOT_PROBLEM=
  local deadline=$(( t0 + timeout * 1000000000 ))
  while kill -0 "$E2E_QEMU_PID" 2>/dev/null; do
    # qemu pauses (does not exit) after a KVM internal error: catch it here.
    if grep -qE 'KVM internal error|emulation failure' "$qerr" 2>/dev/null; then
      E2E_BOOT_PROBLEM="qemu reported an internal error (KVM internal error / emulation failure); killed"
      e2e_kill_qemu
      break
    fi
    if [ "$(e2e_now)" -gt "$deadline" ]; then
      E2E_BOOT_PROBLEM="watchdog: guest still running after ${timeout}s; killed"
      e2e_kill_qemu
      break
    fi
    sleep 0.5
  done
  local qrc=0
  wait "$E2E_QEMU_PID" 2>/dev/null || qrc=$?
  E2E_QEMU_PID=
  [ -n "$tail_pid" ] && wait "$tail_pid" 2>/dev/null
  E2E_BOOT_SECS=$(e2e_secs "$t0")
  tr -d '\r' < "$boot_console" >> "$console"
  if [ -s "$qerr" ]; then
    echo "----- qemu stderr -----" >> "$console"; cat "$qerr" >> "$console"
  fi
  E2E_GUEST_RC=
  if [ -s "$share/rc" ]; then
    E2E_GUEST_RC=$(tr -dc '0-9' < "$share/rc")
  elif [ -z "$E2E_BOOT_PROBLEM" ]; then
    E2E_BOOT_PROBLEM="guest ended without reporting a result (qemu rc=$qrc; kernel panic or guest setup failure?)"
  fi
  return 0
}

# e2e_prepare RUN_DIR SCRIPT: a scenario's host-side step ("# e2e-prepare:
# lib/NAME.sh"), run once before its first boot as `bash SCRIPT SHARE` with
# E2E_SRC_DIR, E2E_BUILD_DIR, E2E_WORK_DIR and E2E_KERNEL_SERIES exported,
# output in RUN_DIR/prepare.log. It may write SHARE/env (shell lines the guest
# sources before the scenario, e.g. a tool's path) or SHARE/skip_reason.
# Sets E2E_PREPARE_RC: 0 boot, 77 SKIP, anything else FAIL.
e2e_prepare() {
  local run=$1 script=$2
  E2E_PREPARE_RC=0
  E2E_SRC_DIR=$E2E_SRC_DIR E2E_BUILD_DIR=$E2E_BUILD_DIR E2E_WORK_DIR=$E2E_WORK_DIR \
    E2E_KERNEL_SERIES=$E2E_KERNEL_SERIES bash "$script" "$run/share" > "$run/prepare.log" 2>&1 \
    || E2E_PREPARE_RC=$?
}

# e2e_tcg_int3_death CONSOLE_LOG: prints the "Oops: int3 ..." line and
# succeeds if the guest kernel died of it: an int3 of the kernel's live text
# patching (text_poke_bp at a static-key site) hit on the other vCPU under
# multi-threaded TCG. The emulator's, not the code under test: run.sh and
# k8s/run.sh run such a guest again, once. Any other Oops is not this.
e2e_tcg_int3_death() {
  tr -d '\r' < "$1" 2>/dev/null | grep -m1 -oE 'Oops: int3[^[]*'
}

# Prints "value" of a "# e2e-KEY: value" header line of a scenario file.
e2e_header() { # $1 = file, $2 = key
  sed -n "s/^# e2e-$2:[[:space:]]*//p" "$1" | head -1
}
