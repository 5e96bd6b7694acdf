#!/bin/bash
# VNN-COMP: install_tool.sh v1 -- installs vsbench (the folder above this one) into python3.
# torch 2.13.0 must be installable by pip; on a machine without a matching wheel install it first
# from https://pytorch.org (CPU or CUDA build), then run this script.
set -euo pipefail
if [ "$#" -ne 1 ] || [ "$1" != "v1" ]; then echo "usage: $0 v1" >&2; exit 1; fi
TOOL_DIR=$(cd "$(dirname "$0")/.." && pwd)
"${VSBENCH_PYTHON:-python3}" -m pip install -e "$TOOL_DIR"
