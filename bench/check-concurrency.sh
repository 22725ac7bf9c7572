#!/usr/bin/env bash
# Is `mxguard check` probing the MX addresses concurrently?
#
# Runs a full check of a two-MX lab domain (DNS and SMTP, loopback only) and,
# beside it, each host's probe sequence on its own, and prints the ratio of
# the full check's wall time to the slowest host's (target ≤ 1.3; a check
# that probed one host after the other would be near 2).
#
#   bench/check-concurrency.sh [DELAY_MS] [RUNS]
#
# DELAY_MS (default 20) is how long each lab host waits before every reply;
# RUNS (default 5) how many times each measurement is taken (median shown).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec cargo run --quiet --release -p mxguard --example check_concurrency -- "$@"
