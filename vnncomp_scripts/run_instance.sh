#!/bin/bash
# VNN-COMP: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULT_FILE TIMEOUT -- vsbench's built-in verifier.
set -euo pipefail
if [ "$#" -ne 6 ] || [ "$1" != "v1" ]; then
    echo "usage: $0 v1 CATEGORY ONNX VNNLIB RESULT_FILE TIMEOUT" >&2; exit 1
fi
TOOL_DIR=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$TOOL_DIR${PYTHONPATH:+:$PYTHONPATH}"
exec "${VSBENCH_PYTHON:-python3}" -m vsbench.vnncomp_run "$3" "$4" "$5" "$6"
