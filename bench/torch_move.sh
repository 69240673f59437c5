#!/bin/bash
# Issue 26: is torch 2.14.1 + torchvision worth the move? Install time, venv size, import time, the local tests (docs/local.md).
#   bash bench/torch_move.sh   (about 6 minutes; writes /tmp/v213 and /tmp/v214)
# Fresh venvs: torch 2.13.0 (CPU wheel) vs torch 2.14.1 + torchvision 0.29.1 (CUDA build), imagend[local,dev] on each.
set -u
cd "$(dirname "$0")/.."
for spec in "213|torch==2.13.0" "214|torch==2.14.1 torchvision==0.29.1"; do
  v=${spec%%|*}; t=${spec#*|}; V=/tmp/v$v
  rm -rf $V; python3 -m venv $V
  $V/bin/python -m pip install -q --upgrade pip 2>/dev/null
  s=$(date +%s.%N); $V/bin/python -m pip install -q $t 2>&1 | grep -v "WARNING: Location" ; e=$(date +%s.%N)
  echo "$v torch install: $(echo "$e - $s" | bc) s"
  s=$(date +%s.%N); $V/bin/python -m pip install -q -e '.[local,dev]' 2>&1 | grep -v "WARNING: Location"; e=$(date +%s.%N)
  echo "$v imagend[local,dev] install: $(echo "$e - $s" | bc) s"
  echo "$v venv size: $(du -sm $V | cut -f1) MB; torch $($V/bin/python -c 'import torch; print(torch.__version__)')"
  $V/bin/python -c 'import time; s=time.perf_counter(); import torch, diffusers; from diffusers import StableDiffusionXLPipeline; print("import torch+diffusers+SDXL pipeline: %.2f s" % (time.perf_counter()-s))'
done
/tmp/v214/bin/python -c 'import torch, torchvision; from torchvision.ops import nms; print("torchvision", torchvision.__version__, "nms ok", nms(torch.tensor([[0.,0,1,1]]), torch.tensor([1.]), 0.5).tolist())'
for v in 213 214; do
  s=$(date +%s.%N)
  /tmp/v$v/bin/python -m pytest -W error -q -p no:cacheprovider tests/local/test_local_backend.py tests/local/test_controlnet_hires.py tests/local/test_images_per_row_tasks.py 2>&1 | tail -1
  e=$(date +%s.%N); echo "$v local tests wall: $(echo "$e - $s" | bc) s"
done
