#!/usr/bin/env bash
# The virtualenv the verl tests run in (docs/verl.md: verl 0.9 pins transformers < 5.11, so it
# cannot share .venv).  It lives outside the checkout, in ${VAPO_VERL_VENV:-~/.cache/vapo/venv-verl},
# so that CI's clean clones reuse it:
#   - built (torch==2.13.0, the CPU build, first; then `pip install -e .[dev,verl]`) when it is
#     missing, when its stamp (a hash of pyproject.toml and the Python version) differs, or when
#     its Python no longer runs; a different Python version starts it over, a changed
#     pyproject.toml reinstalls into it;
#   - otherwise reused; when its editable vapo points at another checkout, only
#     `pip install --no-deps -e .` is re-run (seconds).
# One line per step, with the seconds it took.  Any failure stops with a non-zero status, what
# failed and how to retry (deleting the directory rebuilds it from scratch).
# Sourced: defines vapo_verl_env and VERL_VENV (bin/test-verl).  Run: does the set-up.
# PYTHON picks the interpreter (default python3), as for .venv.
VERL_VENV="${VAPO_VERL_VENV:-$HOME/.cache/vapo/venv-verl}"
VERL_EXTRAS="dev,verl"

_verl_log() { echo "[vapo] verl env: $*" >&2; }

_verl_fail() {
  _verl_log "FAILED: $1"
  _verl_log "to retry, run bin/_verl_env.sh again; to rebuild from scratch: rm -rf '$VERL_VENV'"
  return 1
}

# Run a step, then print its name and the seconds it took (or, if it failed, what failed).
_verl_step() {
  local name="$1" t0=$SECONDS rc=0
  shift
  "$@" >&2 || rc=$?
  if [ "$rc" -ne 0 ]; then _verl_fail "$name (exit $rc)"; return 1; fi
  _verl_log "$name: done in $((SECONDS - t0)) s"
}

vapo_verl_env() {
  local root py pyver want have where t0=$SECONDS
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
  py="${PYTHON:-python3}"
  pyver="$("$py" -c 'import sys; print(sys.version)' 2>/dev/null)" \
    || { _verl_fail "no working Python interpreter '$py' (set PYTHON)"; return 1; }
  want="$( (cat "$root/pyproject.toml"; echo "$VERL_EXTRAS"; echo "$pyver") | sha256sum | cut -d' ' -f1)"
  local stamp="$VERL_VENV/.vapo-verl-stamp"

  if [ -e "$VERL_VENV" ]; then
    have="$("$VERL_VENV/bin/python" -c 'import sys; print(sys.version)' 2>/dev/null || true)"
    if [ "$have" != "$pyver" ]; then
      # A virtualenv is bound to its interpreter: another (or a vanished) one means starting over.
      if [ ! -f "$VERL_VENV/pyvenv.cfg" ] && [ -n "$(ls -A "$VERL_VENV" 2>/dev/null)" ]; then
        _verl_fail "$VERL_VENV exists and is not a virtualenv: not deleting it (set VAPO_VERL_VENV elsewhere)"
        return 1
      fi
      _verl_step "remove the old environment (${have:-its Python does not run}; want ${pyver%% *})" \
        rm -rf "$VERL_VENV" || return 1
    fi
  fi
  if [ ! -x "$VERL_VENV/bin/python" ]; then
    _verl_log "building $VERL_VENV (first run: torch, then vapo[$VERL_EXTRAS]; minutes)"
    mkdir -p "$(dirname "$VERL_VENV")" || { _verl_fail "mkdir $(dirname "$VERL_VENV")"; return 1; }
    _verl_step "create the virtualenv with $py (${pyver%% *})" "$py" -m venv "$VERL_VENV" || return 1
  fi
  local pip=("$VERL_VENV/bin/python" -m pip install -q --disable-pip-version-check)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    rm -f "$stamp"
    _verl_step "upgrade pip" "${pip[@]}" --upgrade pip || return 1
    _verl_step "install torch==2.13.0 (CPU)" "${pip[@]}" "torch==2.13.0" || return 1
    _verl_step "install vapo[$VERL_EXTRAS] (editable, from $root)" "${pip[@]}" -e "$root[$VERL_EXTRAS]" \
      || return 1
    echo "$want" > "$stamp"
  fi
  # Which checkout does the editable install import?  Located without importing it, from /.
  where="$(cd / && "$VERL_VENV/bin/python" -c \
    'import importlib.util as u, os; s = u.find_spec("vapo"); print(os.path.realpath(os.path.dirname(os.path.dirname(s.origin))) if s else "")')" \
    || { _verl_fail "could not run $VERL_VENV/bin/python"; return 1; }
  if [ "$where" != "$root" ]; then
    # Built with the environment's own setuptools when it has one recent enough: no download.
    local iso=()
    if "$VERL_VENV/bin/python" -c 'import setuptools as s, sys; sys.exit(int(s.__version__.split(".")[0]) < 68)' \
        2>/dev/null; then iso=(--no-build-isolation); fi
    _verl_step "point the editable vapo at $root (was ${where:-none}): pip install --no-deps -e" \
      "${pip[@]}" "${iso[@]}" --no-deps -e "$root" || return 1
  fi
  _verl_log "ready: $VERL_VENV ($((SECONDS - t0)) s in all)"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  vapo_verl_env
fi
