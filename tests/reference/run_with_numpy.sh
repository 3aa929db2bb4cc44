#!/bin/sh
# Bazel entry for the Python tests: runs them with the system interpreter,
# which has numpy (the first python3 on PATH may not). Inside `bazel test`,
# SINKSERVE_BIN defaults to the runfiles tree, which holds service/sinkserve
# and tests/make_synthetic_model at the paths the CMake build dir has them.
set -eu
if [ -n "${TEST_SRCDIR:-}" ] && [ -z "${SINKSERVE_BIN:-}" ]; then
  SINKSERVE_BIN="$TEST_SRCDIR/${TEST_WORKSPACE:-sinkserve}"
  export SINKSERVE_BIN
fi
exec /usr/bin/python3 "$@"
