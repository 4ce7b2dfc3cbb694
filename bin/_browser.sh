#!/usr/bin/env bash
# The one routine that provides a headless Chromium for the diagnostics report's browser tests
# (sourced by bin/test, which CI runs).  Found on PATH: nothing to do.  Missing: installed with
# Debian's apt-get when running as root; when that is impossible or fails, the browser tests are
# skipped with the reason printed (tests/diagnostics/test_report_browser.py), unless
# VAPO_REQUIRE_BROWSER=1 (set by .ci/run), which turns a missing browser into a test failure.
# VAPO_NO_BROWSER=1 skips both the install and the browser tests.  A failed install is not retried
# on every run (its reason is kept in $VENV/.vapo-chromium-failed; delete that file to retry),
# except under VAPO_REQUIRE_BROWSER=1.
VAPO_BROWSERS="chromium chromium-browser google-chrome chrome"

vapo_find_browser() {
  local b
  for b in $VAPO_BROWSERS; do
    if command -v "$b" >/dev/null 2>&1; then command -v "$b"; return 0; fi
  done
  return 1
}

vapo_ensure_browser() {
  local why log
  if [ "${VAPO_NO_BROWSER:-0}" = "1" ] && [ "${VAPO_REQUIRE_BROWSER:-0}" != "1" ]; then
    echo "[vapo] VAPO_NO_BROWSER=1: the browser tests are skipped" >&2
    return 0
  fi
  if vapo_find_browser >/dev/null; then return 0; fi
  local stamp="${VENV:-/nonexistent}/.vapo-chromium-failed"
  if [ -f "$stamp" ] && [ "${VAPO_REQUIRE_BROWSER:-0}" != "1" ]; then
    why="$(cat "$stamp") (not retried: delete $stamp to retry)"
  elif [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[vapo] installing Debian's chromium for the report's browser tests (apt-get, first run only)" >&2
    log="$(mktemp)"
    if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >"$log" 2>&1 \
        && vapo_find_browser >/dev/null; then
      rm -f "$log" "$stamp"
      return 0
    fi
    why="apt-get install chromium failed: $(tail -n 1 "$log")"
    rm -f "$log"
    if [ -d "${VENV:-/nonexistent}" ]; then echo "$why" > "$stamp"; fi
  elif [ "$(id -u)" != "0" ]; then
    why="not root, so it cannot be installed here (run: sudo apt-get install chromium)"
  else
    why="no apt-get to install it with (install chromium with your package manager)"
  fi
  export VAPO_BROWSER_MISSING="no Chromium on PATH (tried: $VAPO_BROWSERS); $why"
  if [ "${VAPO_REQUIRE_BROWSER:-0}" = "1" ]; then
    echo "[vapo] $VAPO_BROWSER_MISSING; VAPO_REQUIRE_BROWSER=1, so the browser tests will fail" >&2
  else
    echo "[vapo] $VAPO_BROWSER_MISSING; the browser tests will be skipped" >&2
  fi
  return 0
}
