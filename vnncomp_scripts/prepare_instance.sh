#!/bin/bash
# VNN-COMP: prepare_instance.sh v1 CATEGORY ONNX VNNLIB -- vsbench needs no preparation.
if [ "$#" -ne 4 ] || [ "$1" != "v1" ]; then echo "usage: $0 v1 CATEGORY ONNX VNNLIB" >&2; exit 1; fi
exit 0
