#!/usr/bin/env bash
# Print the path of a working CPython 3.10 (the only version with a Detectron2 build
# reachable here): python3.10 on PATH, else pyenv's 3.10.x. Exit 1 with advice if none.
set -u
try() {
  "$1" -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1 && \
    "$1" -c 'import sys; print(sys.executable)'
}
if command -v python3.10 >/dev/null 2>&1 && try python3.10; then exit 0; fi
if command -v pyenv >/dev/null 2>&1; then
  for v in ${PYENV_VERSION:-} 3.10.13 $(pyenv versions --bare 2>/dev/null | grep '^3\.10' || true); do
    p=$(PYENV_VERSION="$v" pyenv which python 2>/dev/null) && try "$p" && exit 0
  done
fi
echo "error: Python 3.10 not found. Install it (e.g. 'pyenv install 3.10.13' or your" \
     "distribution's python3.10 package) and run make again." >&2
exit 1
