#!/usr/bin/env bash
# The GPU run (issue 13 item 6): the benchmark suite on a lent GPU machine, which reaches no
# package index and runs its own Python 3.12 (torch, numpy, onnx, CPU onnxruntime; no pydicom,
# pynetdicom, monai, ...: ../shared/reference/GPU.md). Everything it needs travels as wheels,
# in parts of at most 55 MiB because one device call carries at most 64 MiB with the tree.
#
#   benchmarks/gpu_run.sh prepare          here: download the cp312 wheels (onnxruntime-gpu,
#                                          nvImageCodec, the gateway's dependencies), pack them
#                                          into .ortgpu1/ .ortgpu2/ ... (git-ignored)
#   benchmarks/gpu_run.sh part             there: one call per part, each carrying only
#                                          .ortgpuN/, back to back while the machine is warm;
#                                          prints the parts that arrived
#   benchmarks/gpu_run.sh run [ARGS]       there, last call: join and install the parts into
#                                          /tmp/aigw-site, check that onnxruntime offers
#                                          CUDAExecutionProvider, run the decode benchmark (CPU
#                                          against nvImageCodec, at most DECODE_LIMIT_S, default
#                                          90 s), then the suite (ARGS are the suite's; at most
#                                          RUN_LIMIT_S, default 480 s), results to $OUT
#   benchmarks/gpu_run.sh run --local [ARGS]  here, on the CPU: the same suite invocation with
#                                          .venv's Python and no install, to test the script
#
# Results: benchmarks/results/<machine>-<gpu>/ (suite and decode name the folder after the machine
# and the GPU it used); commit them from $OUT after the run.
set -euo pipefail
cd "$(dirname "$0")/.."

PART_MIB=55
SITE=${GPU_SITE:-/tmp/aigw-site}
RUN_LIMIT_S=${RUN_LIMIT_S:-480}
DECODE_LIMIT_S=${DECODE_LIMIT_S:-90}
# What the GPU image lacks (GPU.md), as cp312 manylinux wheels; --no-deps below, so the list
# is complete by hand: the image's own torch, numpy, onnx, scipy, pillow, jinja2, httpx,
# pyyaml, prometheus-client and nvidia-ml-py are used as they are. nvImageCodec decodes
# JPEG 2000 / HTJ2K only with nvJPEG2000 beside it, and JPEG only with nvJPEG (torch's CUDA
# 13 packages bring neither): gateway/inference/gpu_decode.py names the same three.
WHEELS=(
  onnxruntime-gpu nvidia-nvimgcodec-cu13 nvidia-nvjpeg2k-cu13 nvidia-nvjpeg
  pydicom pynetdicom pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle pyjpegls
  monai highdicom lxml
  pydantic pydantic-core pydantic-settings python-dotenv typing-inspection annotated-types
  sqlalchemy alembic mako
  minio argon2-cffi argon2-cffi-bindings cffi pycparser pycryptodome urllib3 certifi
  click fastapi starlette annotated-doc uvicorn h11 python-multipart anyio idna
  celery kombu amqp vine billiard redis click-didyoumean click-plugins click-repl
  prompt-toolkit wcwidth python-dateutil six tzlocal
  matplotlib contourpy cycler fonttools kiwisolver pyparsing packaging
)

prepare() {
  local stage
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' RETURN
  .venv/bin/python -m pip download -q --no-deps --only-binary :all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$stage/wheels" "${WHEELS[@]}"
  tar -C "$stage" -cf "$stage/wheels.tar" wheels
  rm -rf .ortgpu[0-9]*
  split -b "${PART_MIB}M" -d -a 2 "$stage/wheels.tar" "$stage/part."
  local n=0
  for part in "$stage"/part.*; do
    n=$((n + 1))
    mkdir -p ".ortgpu$n"
    mv "$part" ".ortgpu$n/"
  done
  sha256sum "$stage/wheels.tar" | cut -d' ' -f1 > .ortgpu1/wheels.sha256
  echo "gpu_run: $n parts in .ortgpu1 .. .ortgpu$n ($(du -sh "$stage/wheels.tar" | cut -f1))"
  echo "gpu_run: carry each in its own call: run(command='benchmarks/gpu_run.sh part',"
  echo "         carry=['.ortgpuN']), then run(command='benchmarks/gpu_run.sh run')"
}

parts() { ls -d .ortgpu[0-9]* 2>/dev/null | sort -V; }

part() {
  parts | while read -r folder; do echo "$folder: $(ls "$folder" | tr '\n' ' ')"; done
}

install() {
  local stage
  stage=$(mktemp -d)
  cat $(parts | sed 's#$#/part.*#') > "$stage/wheels.tar"
  if [[ -f .ortgpu1/wheels.sha256 ]]; then
    echo "$(cat .ortgpu1/wheels.sha256)  $stage/wheels.tar" | sha256sum -c --quiet - \
      || { echo "gpu_run: the joined parts do not match (a part is missing?): $(part)" >&2; exit 1; }
  fi
  tar -C "$stage" -xf "$stage/wheels.tar"
  "${GPU_PYTHON:-python3}" -m pip install -q --no-index --no-deps --target "$SITE" "$stage"/wheels/*.whl
  rm -rf "$stage"
}

run() {
  local python=${GPU_PYTHON:-python3} local_run=0
  if [[ "${1:-}" == "--local" ]]; then
    local_run=1; python=.venv/bin/python; shift
  else
    install
    # The image's CPU onnxruntime would shadow the GPU build: ours comes first on the path.
    export PYTHONPATH="$SITE:$PWD"
  fi
  "$python" -c 'import onnxruntime as o; print("gpu_run: onnxruntime", o.__version__, o.__file__, o.get_available_providers())'
  if [[ $local_run -eq 0 ]] && ! "$python" -c \
      'import onnxruntime as o, sys; sys.exit("CUDAExecutionProvider" not in o.get_available_providers())'; then
    echo "gpu_run: no CUDAExecutionProvider: GPU figures would be CPU figures; stopping" >&2
    exit 3
  fi
  local out=${OUT:-/tmp/aigw-gpu-out}
  mkdir -p "$out"
  "$python" -c 'from gateway.inference import gpu_decode as g; print("gpu_run: GPU decode:", g.unavailable_reason() or "nvImageCodec ready")'
  # Decode per transfer syntax, CPU against GPU (not fatal: the suite still runs).
  timeout --signal=INT "$DECODE_LIMIT_S" "$python" -m benchmarks.decode --out "$out/results" \
    2>&1 | tee "$out/decode.log" || echo "gpu_run: decode benchmark exit ${PIPESTATUS[0]}"
  # The suite writes its own folder, benchmarks/results/<machine>[-<gpu>]/; a copy goes to $OUT.
  timeout --signal=INT "$RUN_LIMIT_S" "$python" -m benchmarks.suite --out "$out/results" "$@" \
    2>&1 | tee "$out/suite.log"
  local rc=${PIPESTATUS[0]}
  echo "gpu_run: suite exit $rc; results in $out/results"
  return "$rc"
}

case "${1:-}" in
  prepare) prepare ;;
  part) part ;;
  run) shift; run "$@" ;;
  *) sed -n '2,23p' "$0"; exit 2 ;;
esac
