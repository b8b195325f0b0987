#!/usr/bin/env bash
# One GPU session, prepared: versions, the CUDA tests, and the benchmark figures that
# docs/performance.md records. Run from the repository root on a CUDA machine:
#
#     scripts/gpu_check.sh [OUTDIR]        # default outputs/gpu_check; one log per part
#
# The most important figure (SD2.1-shaped, fp16, batch 8, 50 steps) runs first, so a session cut
# short still has it. Each part runs even if an earlier one failed; the exit status says if any did.
set -u
out=${1:-outputs/gpu_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
py=${PYTHON:-python3}
status=0

part() {  # part NAME COMMAND...: run it, keep its log, remember a failure
    local name=$1
    shift
    echo "=== $name: $*"
    "$@" >"$out/$name.txt" 2>&1 || { status=1; echo "!!! $name failed"; }
    tail -n 12 "$out/$name.txt"
}

part versions bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv;
  $py -c 'import sys, torch, diffusers, transformers; print(sys.version.split()[0], \"torch\", torch.__version__,
  \"cuda\", torch.version.cuda, \"diffusers\", diffusers.__version__, \"transformers\", transformers.__version__)'"
bench=("$py" scripts/benchmark.py --device cuda)
part sd21_fp16 "${bench[@]}" --model sd21-shaped --precision fp16 --batch-size 8 --steps 50 --repeats 3 --profile
part pytest_gpu "$py" -m pytest -q -m gpu tests/test_gpu.py tests/test_sdxl.py -p no:cacheprovider -rA
part sdxl_fp16 "${bench[@]}" --model sdxl-shaped --precision fp16 --batch-size 4 --steps 50 --repeats 3 --profile
part tiny_fp32 "${bench[@]}" --model tiny --precision fp32 --batch-size 4 --steps 20 --repeats 5
part tiny_fp16 "${bench[@]}" --model tiny --precision fp16 --batch-size 4 --steps 20 --repeats 5
part sd21_fp16_channels_last "${bench[@]}" --model sd21-shaped --precision fp16 --batch-size 8 --steps 50 \
    --repeats 2 --channels-last
# SD3.5 and FLUX.1 (docs/mmdit.md)
part pytest_gpu_mmdit "$py" -m pytest -q -m gpu tests/test_gpu_mmdit.py tests/test_wan.py tests/test_compilation.py \
    -p no:cacheprovider -rA
part sd35m_bf16 "${bench[@]}" --model sd35m-shaped --precision bf16 --batch-size 4 --steps 28 --repeats 3 --profile
part flux_bf16 "${bench[@]}" --model flux-shaped --precision bf16 --batch-size 1 --steps 28 --repeats 3 --profile
# sample.compile=true (docs/performance.md, "Compiled"): eager and compiled diffusers and asyndm side by
# side, then mode="reduce-overhead" (CUDA graphs); one part per family's shaped model, the tiny one too
part compile_sd21_fp16 "${bench[@]}" --model sd21-shaped --precision fp16 --batch-size 8 --steps 50 --repeats 3 \
    --variants dm,asyndm --compile
part compile_tiny_fp32 "${bench[@]}" --model tiny --precision fp32 --batch-size 4 --steps 20 --repeats 5 \
    --variants dm,asyndm --compile
part compile_sdxl_fp16 "${bench[@]}" --model sdxl-shaped --precision fp16 --batch-size 4 --steps 50 --repeats 2 \
    --variants dm,asyndm --compile
part compile_sd35m_bf16 "${bench[@]}" --model sd35m-shaped --precision bf16 --batch-size 4 --steps 28 --repeats 2 \
    --variants dm,asyndm --compile
part compile_flux_bf16 "${bench[@]}" --model flux-shaped --precision bf16 --batch-size 1 --steps 28 --repeats 2 \
    --variants dm,asyndm --compile
cost=("$py" scripts/call_cost.py --device cuda --precision bf16 --resolution 1024 --rounds 5)
part sd35m_call_cost "${cost[@]}" --model sd35m-shaped --batch-size 4
part flux_call_cost "${cost[@]}" --model flux-shaped --batch-size 1
# Wan 2.1 T2V 1.3B (docs/video.md): 480x832, 21 frames (6 latent frames, 9360 tokens), bf16
part wan_bf16 "${bench[@]}" --model wan-shaped --precision bf16 --batch-size 1 --steps 10 --frames 21 --repeats 2
part compile_wan_bf16 "${bench[@]}" --model wan-shaped --precision bf16 --batch-size 1 --steps 10 --frames 21 \
    --repeats 2 --variants dm,asyndm --compile
exit $status
