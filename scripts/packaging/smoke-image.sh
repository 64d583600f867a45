#!/bin/bash
# Smoke test of a built plugin image: the plugin answers --version, starts
# (without ublk_drv here, so its backend is unusable), serves /healthz (200),
# /readyz (503 naming the missing ublk_drv) and /metrics (ublk_csi_build_info),
# and exits cleanly on SIGTERM. Uses the image's own bash for HTTP (no curl in
# the image) and run-in-image.sh's runtime settings.
#
#   scripts/packaging/smoke-image.sh ublk-csi:dev
set -euo pipefail
image=${1:?usage: $0 IMAGE}
here=$(dirname "$0")
name=ublk-csi-smoke-$$
fail() { echo "smoke-image: FAIL: $*" >&2; podman logs "$name" 2>&1 | tail -n 20 >&2 || true; exit 1; }
cleanup() { podman rm -f "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT

version=$("$here/run-in-image.sh" "$image" --version)
[[ "$version" == "ublk-csi version "* ]] || fail "--version printed '$version'"
echo "smoke-image: --version: $version"

"$here/run-in-image.sh" --detach --name "$name" --entrypoint /bin/bash "$image" \
  -c 'mkdir -p /var/lib/ublk-csi /csi && exec /usr/local/bin/ublk-csi --node-id=smoke' >/dev/null
get() { # PATH -> "STATUS BODY..." from inside the container
  podman exec "$name" bash -c 'exec 3<>/dev/tcp/127.0.0.1/9810 || exit 7
    printf "GET %s HTTP/1.0\r\n\r\n" "$1" >&3; timeout 5 cat <&3' _ "$1"
}
for _ in $(seq 50); do get /healthz >/dev/null 2>&1 && break; sleep 0.2; done
out=$(get /healthz) || fail "/healthz: no answer"
grep -q '^HTTP/1.1 200' <<<"$out" || fail "/healthz: $(head -n1 <<<"$out")"
out=$(get /readyz) || fail "/readyz: no answer"
{ grep -q '^HTTP/1.1 503' <<<"$out" && grep -q 'ublk_drv' <<<"$out"; } || fail "/readyz without ublk_drv: $(tr -d '\r' <<<"$out" | tail -n1)"
out=$(get /metrics) || fail "/metrics: no answer"
grep -q '^ublk_csi_build_info{version=' <<<"$out" || fail "/metrics has no ublk_csi_build_info"
echo "smoke-image: /healthz 200, /readyz 503 (no ublk_drv here), /metrics has ublk_csi_build_info"
podman stop -t 10 "$name" >/dev/null
code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
[ "$code" = 0 ] || fail "exit code $code after SIGTERM"
podman logs "$name" 2>&1 | grep -q 'shutdown complete' || fail "no 'shutdown complete' after SIGTERM"
echo "smoke-image: SIGTERM -> clean shutdown (exit 0)"
