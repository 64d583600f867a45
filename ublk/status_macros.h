// The two status macros Debian's abseil (20220623) lacks. Used by ublk/ and csi/.
#pragma once

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define UBLK_STATUS_CONCAT_INNER_(a, b) a##b
#define UBLK_STATUS_CONCAT_(a, b) UBLK_STATUS_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function if `expr` is not OK.
#define RETURN_IF_ERROR(expr)                    \
  do {                                           \
    ::absl::Status ublk_status_ = (expr);        \
    if (!ublk_status_.ok()) return ublk_status_; \
  } while (0)

// ASSIGN_OR_RETURN(lhs, expr): evaluates a StatusOr<T>; returns its status on
// error, else moves its value into `lhs` (which may be a declaration).
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL_(UBLK_STATUS_CONCAT_(ublk_statusor_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL_(var, lhs, expr)   \
  auto var = (expr);                             \
  if (!var.ok()) return std::move(var).status(); \
  lhs = std::move(var).value()
