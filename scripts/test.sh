#!/usr/bin/env bash
# `make test`: every test, in two runs. The ones that need no Docker engine are spread over every core
# (pytest-xdist); the Docker ones then run one at a time, since they share one engine and count its containers.
# Each run prints its 20 slowest tests. Extra pytest arguments ($@) go to both runs.
#
# Exit status: the first failure's (pytest's 1 for failed tests, 2-4 for errors); 5 (no test ran) only when
# neither run ran a test, so a selection that only one of them holds passes, and an empty one never does.
set -uo pipefail
python=${PYTHON:-.venv/bin/python}
common=(-q -p no:cacheprovider --durations=20)

"$python" -m pytest "${common[@]}" -m "not docker" -n auto "$@"
first=$?
"$python" -m pytest "${common[@]}" -m docker "$@"
second=$?

for status in "$first" "$second"; do
    if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then
        exit "$status"
    fi
done
if [ "$first" -eq 5 ] && [ "$second" -eq 5 ]; then
    echo "no test ran" >&2
    exit 5
fi
exit 0
