#!/usr/bin/env bash
# The house style, checked offline: ruff (black-compatible format, isort order, flake8's E/W/F at 120 columns),
# mypy on common/, and every JSON file in model-zoo's `pretty-format-json --indent=4 --no-sort-keys` form.
# Usage: bash tools/lint.sh          check only (what .ci/run and the pre-commit hooks run)
#        bash tools/lint.sh --fix    rewrite formatting, import order and JSON layout in place, then check
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${LINT_BIN:-.venv/bin}"
mapfile -t JSON_FILES < <(git ls-files --cached --others --exclude-standard '*.json')
if [ "${1:-}" = "--fix" ]; then
    "$BIN/ruff" format .
    "$BIN/ruff" check --fix .
    "$BIN/pretty-format-json" --autofix --indent=4 --no-sort-keys "${JSON_FILES[@]}" || true
fi
echo "ruff format:" && "$BIN/ruff" format --check .
echo "ruff check:" && "$BIN/ruff" check .
echo "mypy:" && "$BIN/mypy"
echo "json:" && "$BIN/pretty-format-json" --indent=4 --no-sort-keys "${JSON_FILES[@]}" && echo "${#JSON_FILES[@]} JSON files formatted"
