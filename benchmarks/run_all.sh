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
python benchmarks/speedup.py --backbone crepe-full --input-seconds 0.064 --threads 1 --repeats 30 --multiple-of 8 --json $out/speedup_widths_crepe-full_x8.json
for b in wav2vec2-base musicfm clap-cnn14; do
  python benchmarks/speedup.py --backbone $b --input-seconds 4 --threads 2 --repeats 10 --warmup 2 --multiple-of 8 --json $out/speedup_widths_${b}_x8.json
done
python benchmarks/crepe_conv.py --json $out/crepe_conv.json
python benchmarks/train_step.py --backbone crepe-full --batch 8 --json $out/train_step_crepe-full.json
# the grid's batch, fp32 and bf16 autocast (params.yaml: CREPE trains in bf16; benchmarks/results/precision.md)
python benchmarks/train_step.py --backbone crepe-full --batch 8 --precision bf16 --json $out/train_step_crepe-full_bf16.json
for p in fp32 bf16; do
  python benchmarks/train_step.py --backbone whisper-tiny-encoder --input-seconds 1 --batch 8 --precision $p --json $out/train_step_whisper-tiny-encoder_b8_$p.json
done
for b in whisper-tiny-encoder wav2vec2-base musicfm clap-cnn14; do
  python benchmarks/train_step.py --backbone $b --input-seconds 1 --batch 4 --repeats 5 --warmup 1 --json $out/train_step_$b.json
done
python benchmarks/stage_overheads.py --repeats 5 --json $out/stage_overheads.json
for spec in "crepe-full 0.064" "whisper-tiny-encoder 1"; do
  set -- $spec
  python benchmarks/onnx_speed.py --backbone $1 --pretrained --input-seconds $2 --ratios 0.5 0.75 --repeats 30 --json $out/onnx_speed_$1.json
done
python benchmarks/onnx_speed.py --report $out/onnx_speed.md $out/onnx_speed_crepe-full.json $out/onnx_speed_whisper-tiny-encoder.json
# the four backbones in ONNX Runtime, widths in multiples of 8 (1 thread)
for spec in "crepe-full 0.064" "wav2vec2-base 4" "clap-cnn14 4" "musicfm 4"; do
  set -- $spec
  python benchmarks/onnx_speed.py --backbone $1 --input-seconds $2 --ratios 0.25 0.5 0.75 --multiple-of 8 --repeats 20 --json $out/onnx_speed_x8_$1.json
done
python benchmarks/onnx_speed.py --report $out/onnx_speed_x8.md $out/onnx_speed_x8_*.json
# the same in multiples of 16 (ONNX Runtime's conv block on AVX-512), and the layout counts that explain it;
# timed twice: alternated run by run (cold caches) and warm, each model 10 runs in a row (kwyn.timing)
# run twice, all four backbones then all four again (README: run 1 above run 2)
for run in "" _run2; do
  for spec in "crepe-full 0.064" "clap-cnn14 4" "wav2vec2-base 4" "musicfm 4"; do
    set -- $spec
    python benchmarks/onnx_speed.py --backbone $1 --input-seconds $2 --ratios 0.25 0.5 0.75 --multiple-of 16 --repeats 30 --warm-block 10 --json $out/onnx_speed_x16${run}_$1.json
  done
done
python benchmarks/onnx_speed.py --report $out/onnx_speed_x16.md $out/onnx_speed_x16_{crepe-full,clap-cnn14,wav2vec2-base,musicfm}.json
python benchmarks/onnx_speed.py --report $out/onnx_speed_x16_run2.md $out/onnx_speed_x16_run2_*.json
# Whisper's encoder at 4 s (as the others) and 1 s (the grid's clips); not in the two reports above
python benchmarks/onnx_speed.py --backbone whisper-tiny-encoder --input-seconds 4 --ratios 0.25 0.5 0.75 --multiple-of 16 --repeats 30 --warm-block 10 --json $out/onnx_speed_x16_whisper-tiny-encoder.json
python benchmarks/onnx_speed.py --backbone whisper-tiny-encoder --input-seconds 1 --ratios 0.25 0.5 0.75 --multiple-of 16 --repeats 30 --warm-block 10 --json $out/onnx_speed_x16_whisper-tiny-encoder_1s.json
# PyTorch with its Linear layers on oneDNN instead of MKL (an experiment)
for spec in "wav2vec2-base 4" "crepe-full 0.064" "clap-cnn14 4" "musicfm 4"; do
  set -- $spec
  python benchmarks/onnx_speed.py --backbone $1 --input-seconds $2 --ratios 0.25 0.5 0.75 --multiple-of 16 --repeats 30 --warm-block 10 --torch-linear onednn --json $out/onnx_speed_x16_onednn_$1.json
done
python benchmarks/onnx_speed.py --report $out/onnx_speed_x16_onednn.md $out/onnx_speed_x16_onednn_*.json
# CREPE exported with 1-D (kwyn's) and 2-D (torchcrepe's) convolutions, one session
python benchmarks/onnx_speed.py --backbone crepe-full --input-seconds 0.064 --ratios 0.25 0.5 0.75 --multiple-of 16 --repeats 20 --json $out/onnx_conv_crepe-full_x16_conv1d.json
python benchmarks/onnx_speed.py --backbone crepe-full --input-seconds 0.064 --ratios 0.25 0.5 0.75 --multiple-of 16 --repeats 20 --crepe-conv2d --json $out/onnx_conv_crepe-full_x16_conv2d.json
for spec in "wav2vec2-base 4 10" "clap-cnn14 4 10" "crepe-full 0.064 30" "whisper-tiny-encoder 4 30"; do
  set -- $spec
  python benchmarks/op_profile.py --backbone $1 --input-seconds $2 --ratio 0.75 --multiple-of 16 --threads 1 --repeats $3 --runtime onnxruntime --json $out/op_profile_$1_ort.json
done
python benchmarks/ort_layout.py --backbones clap-cnn14 crepe-full wav2vec2-base musicfm --json $out/ort_layout.json --report $out/ort_layout.md
python benchmarks/ort_layernorm.py --json $out/ort_layernorm.json
# where wav2vec2-base's time goes at 75 % removed (speed-up / FLOPs ratio 0.80)
python benchmarks/op_profile.py --backbone wav2vec2-base --input-seconds 4 --ratio 0.75 --multiple-of 8 --json $out/op_profile_wav2vec2-base.json
# the same at the ONNX table's settings (multiples of 16, 1 thread), with time and FLOPs per operator kind
python benchmarks/op_profile.py --backbone wav2vec2-base --input-seconds 4 --ratio 0.75 --multiple-of 16 --threads 1 --json $out/op_profile_wav2vec2-base_x16_1thread.json
# after `make repro`: the grid's own models as int8, and which node int8 breaks
python benchmarks/int8_grid.py --experiments crepe_pitch_kwyn_refit_50 crepe_pitch_kwyn_refit_75 crepe_pitch_hardconcrete_75 whisper_word_kwyn_distil_50 whisper_word_kwyn_distil_75 --repeats 20 --json $out/int8_grid.json
python benchmarks/int8_sensitivity.py --experiment whisper_word_kwyn_distil_75 --split valid --json $out/int8_sensitivity.json
