#!/usr/bin/env bash
# tests/launch/method_defaults.sh DELTATUNE SOURCE_DIR — every method with its default options trains (3 steps,
# 2 ranks) on every bundled backbone (stories260K) and on the real encoder (all-MiniLM-L6-v2, models/ from
# scripts/fetch-models.sh); the multi-task methods on --task sst2,stsb. --fish.samples is lowered to 16 (a cost knob: the Fisher pass over 1,024 examples is the
# default's only slow part); nothing else is set.
set -u
bin=$1 src=$2
cd "$src" || exit 2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
methods="full bitfit houlsby pfeiffer parallel_adapter lora prefix prompt ia3 compacter mam lst fish dsee sparse_adapter shared_adapter hyperformer hyperprompt attempt"
# The multi-task methods train on two tasks (a classification and the STS-B regression).
multitask="shared_adapter hyperformer hyperprompt attempt"
[ -f models/all-minilm-l6-v2/model.safetensors ] || { echo "FAIL: models/all-minilm-l6-v2 missing: run scripts/fetch-models.sh"; exit 1; }
fail=0 runs=0
for backbone in stories260K minilm; do
  case $backbone in
    stories260K) model=(--model data/stories260K/stories260K.bin --tokenizer data/stories260K/tok512.bin) ;;
    minilm) model=(--model models/all-minilm-l6-v2 --tokenizer models/all-minilm-l6-v2/vocab.txt) ;;
  esac
  for m in $methods; do
    task=sst2
    case " $multitask " in *" $m "*) task=sst2,stsb ;; esac
    out=$(mpirun -np 2 --oversubscribe --bind-to none "$bin" train "${model[@]}" --task "$task" --data data/glue \
            --method "$m" --fish.samples 16 --train.steps 3 --train.batch-size 4 --train.max-len 32 \
            --train.eval-every 0 --train.eval-max 64 --threads 1 2>&1)
    rc=$?
    runs=$((runs + 1))
    last=$(echo "$out" | grep -E -m1 "step +3/3" | sed 's/.*step/step/')
    if [ $rc -ne 0 ] || [ -z "$last" ]; then
      echo "FAIL: $backbone $m: exit $rc"; echo "$out" | tail -n 5; fail=1
    else
      echo "ok: $backbone $m: $last"
    fi
  done
done
echo "$runs runs"
exit $fail
