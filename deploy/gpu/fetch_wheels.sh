#!/usr/bin/env bash
# Wheels the GPU machine lacks, for deploy/gpu/engine.sh's training check (training/ imports
# pydantic; the GPU image has torch, transformers, peft, accelerate, rich, click but no pydantic).
# Run here, in the repository root, where pip reaches PyPI; then carry [".gpu_data", ".whl"].
# Versions: those of this project's virtualenv; cp312 manylinux builds (the GPU image's Python 3.12).
set -eu
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PY=${PYTHON:-.venv/bin/python}
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0
ls -l .whl
