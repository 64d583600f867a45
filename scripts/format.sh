#!/bin/bash
# Formats every tracked C++ file with clang-format-14 (.clang-format: Google
# style, 100 columns, the limit most of the tree already keeps).
#   scripts/format.sh          rewrite the files in place
#   scripts/format.sh --check  change nothing; fail if clang-format would change
#                              a file or shellcheck (.shellcheckrc) flags a script
set -euo pipefail
cd "$(dirname "$0")/.."
CLANG_FORMAT=${CLANG_FORMAT:-clang-format-14}
mapfile -t cxx < <(git ls-files '*.cc' '*.h')
if [ "${1:-}" != --check ]; then
  "$CLANG_FORMAT" -i "${cxx[@]}"
  exit 0
fi
rc=0
out=$(mktemp)
if ! "$CLANG_FORMAT" --dry-run -Werror "${cxx[@]}" 2>"$out"; then
  n=$(grep -c 'error:' "$out" || true)
  head -40 "$out"
  echo "format-check: clang-format would change $n places; run scripts/format.sh" >&2
  rc=1
fi
rm -f "$out"
mapfile -t sh < <(git ls-files '*.sh' .ci/run)
if ! shellcheck -S warning "${sh[@]}"; then
  echo "format-check: shellcheck found problems in the shell scripts" >&2
  rc=1
fi
[ $rc -eq 0 ] && echo "format-check: ${#cxx[@]} C++ files and ${#sh[@]} shell scripts clean"
exit $rc
