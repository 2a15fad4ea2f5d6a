#!/usr/bin/env bash
# Set-up and entry points for a fresh machine: creates .venv, installs optrewrite with its
# test extras, then runs the requested job.
#   bash tools/dev.sh demo   rewrite the bundled example graph and show what changed
#   bash tools/dev.sh test   run the test suite (in parallel: pytest-xdist, -n auto)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
stamp="$venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e '.[test]'
    rm -f "$venv"/.installed-*
    touch "$stamp"
fi
export PATH="$PWD/$venv/bin:$PATH"
case "${1:-}" in
    demo)
        shift
        exec python tools/demo.py "$@"
        ;;
    test)
        shift
        exec python -m pytest -n auto "$@"  # one pytest-xdist worker per core; -n 0: one process
        ;;
    *)
        echo "usage: bash tools/dev.sh demo|test [args...]" >&2
        exit 2
        ;;
esac
