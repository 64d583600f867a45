# engine-corruption: proves the data check used by engine-basic catches data
# errors served by a ublk export, not just crashes. `ublk-tool serve
# --inject_corruption` flips one byte of the first READ it serves; the same
# e2e_data_check that engine-basic uses must report a mismatch. A clean export
# (same arguments, no injection) must pass the same check, so the mismatch is
# caused by the injected corruption and nothing else. Both run with
# --copy_mode=user_copy: in zero copy (7.x's default) the read data never
# passes through the server's memory, so there is nothing to flip.
# e2e-timeout: 240
# e2e-requires: ublk/ublk-tool
. "$E2E_LIB"
e2e_require_ublk_tool

SIZE=$((64 * 1024 * 1024))
MODE=--copy_mode=user_copy
PAT=$E2E_SCRATCH/pattern
e2e_make_pattern "$PAT" 16

e2e_step "clean export: the data check passes"
if ublk_serve clean --target=file --backing="$E2E_SCRATCH/clean.img" --size=$SIZE --create "$MODE"; then
  if e2e_data_check "$SRV_DEV" "$PAT"; then e2e_ok "clean export: data check passed"
  else e2e_check_failed "clean export: data check failed (without injected corruption)"; fi
  ublk_stop TERM || e2e_check_failed "clean export: stop"
else
  e2e_check_failed "clean export did not come up"
fi

e2e_step "export with --inject_corruption: the data check must FAIL"
if ublk_serve corrupt --target=file --backing="$E2E_SCRATCH/corrupt.img" --size=$SIZE --create \
    "$MODE" --inject_corruption; then
  if e2e_data_check "$SRV_DEV" "$PAT"; then
    e2e_check_failed "data check PASSED on an export that corrupts a read: the injected" \
      "corruption was not seen (was it spent on the kernel's partition scan at START_DEV?)"
  else
    e2e_ok "data check caught the injected corruption"
  fi
  # Which read took the flipped byte (ours, or e.g. the kernel's partition scan).
  grep -o 'inject_corruption: .*' "$SRV_LOG" | sed 's/^/  | /'
  ublk_stop TERM || e2e_check_failed "corrupting export: stop"
else
  e2e_check_failed "export with --inject_corruption did not come up"
fi

e2e_finish
