#!/usr/bin/env bash
# Idempotent set-up of the local virtual environment .venv (sourced by bin/vapo and bin/test).
# torch is installed first and pinned to the CPU build so that nothing pulls CUDA wheels.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
STAMP="$VENV/.vapo-installed"
# Extras installed with the package: everything the test suite exercises (~0.6 GB beyond torch).
# The verl extra is not among them: verl 0.9 pins transformers < 5.11, so it gets an environment
# of its own (bin/_verl_env.sh, run by bin/test-verl; docs/verl.md), and here its tests say they
# are skipped where verl is absent.
EXTRAS="dev,math,hf,data,logging,gym"
WANT="$( (cat "$ROOT/pyproject.toml"; echo "$EXTRAS") | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[vapo] creating virtual environment in $VENV" >&2
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[vapo] installing torch==2.13.0 (CPU) and vapo[$EXTRAS] into $VENV (first run only)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q "torch==2.13.0" >&2
  "$VENV/bin/python" -m pip install -q -e "$ROOT[$EXTRAS]" >&2
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
