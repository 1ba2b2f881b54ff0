#!/usr/bin/env bash
# Every benchmark of the README, one after the other (run on an otherwise idle machine).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
out=benchmarks/results
python benchmarks/speedup.py --backbone crepe-full --input-seconds 0.064 --threads 1 --repeats 30 --json $out/speedup_crepe-full.json
for b in wav2vec2-base musicfm clap-cnn14; do
  python benchmarks/speedup.py --backbone $b --input-seconds 4 --threads 2 --repeats 10 --warmup 2 --json $out/speedup_$b.json
done
# widths in multiples of 8 at conv and FFN sites (sparsity.multiple_of)
python benchmarks/speedup.py --backbone crepe-full --input-seconds 0.064 --threads 1 --repeats 30 --multiple-of 8 --json $out/speedup_crepe-full_x8.json
for b in wav2vec2-base musicfm clap-cnn14; do
  python benchmarks/speedup.py --backbone $b --input-seconds 4 --threads 2 --repeats 10 --warmup 2 --multiple-of 8 --json $out/speedup_${b}_x8.json
done
python benchmarks/crepe_conv.py --json $out/crepe_conv.json
python benchmarks/train_step.py --backbone crepe-full --batch 8 --json $out/train_step_crepe-full.json
for b in whisper-tiny-encoder wav2vec2-base musicfm clap-cnn14; do
  python benchmarks/train_step.py --backbone $b --input-seconds 1 --batch 4 --repeats 5 --warmup 1 --json $out/train_step_$b.json
done
python benchmarks/stage_overheads.py --repeats 5 --json $out/stage_overheads.json
for spec in "crepe-full 0.064" "whisper-tiny-encoder 1"; do
  set -- $spec
  python benchmarks/onnx_speed.py --backbone $1 --pretrained --input-seconds $2 --ratios 0.5 0.75 --repeats 30 --json $out/onnx_speed_$1.json
done
python benchmarks/onnx_speed.py --report $out/onnx_speed.md $out/onnx_speed_crepe-full.json $out/onnx_speed_whisper-tiny-encoder.json
