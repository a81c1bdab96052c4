"""bench/gpu/table.py — the shapes and method settings bench/gpu/run.py measures on both sides.

Kept apart from run.py (which never imports torch: it only launches the binary and torch_eager.py) and
from torch_eager.py (which imports torch and transformers), so both read one table. The shapes are those
of the PyTorch-eager table in ../shared/gpu/README.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common as C  # noqa: E402

WARMUP, STEPS = 3, 10                 # untimed steps, then the steps whose median is reported
KEEP = 0.005                          # FISH: fraction of the weights that train
LORA_R, LORA_ALPHA = 8, 16            # LoRA on q and v (the LoRA paper's GLUE setting)
HOULSBY_M = 64                        # --houlsby.bottleneck's default

# model: batch, tokens per example, dtype, methods, the options that pick the model in deltatune, and the
# time limits in seconds of one deltatune run and of the eager side's process for the whole model.
MODELS = {
    "stories260K": dict(batch=16, seq=64, dtype="fp32", methods=["full", "lora", "fish"],
                        ours=["--model", C.STORIES, "--tokenizer", C.TOK], timeout=90, torch_timeout=90),
    "t5-base": dict(batch=32, seq=128, dtype="fp32", methods=["full", "lora", "fish", "houlsby", "lst"],
                    ours=["--model", "t5-base", "--tokenizer", C.T5_TOK], timeout=120, torch_timeout=150),
    "t5-3b": dict(batch=16, seq=128, dtype="bf16", methods=["lora", "fish"],
                  # --threads 16: the random init of 2.85 B weights runs on the host (then one copy to the GPU)
                  ours=["--model", "t5-3b", "--tokenizer", C.T5_TOK, "--train.dtype", "bf16", "--threads", "16"],
                  timeout=240,
                  torch_timeout=180),
}

# deltatune's options per method. FISH picks its mask by magnitude: the Fisher's per-example backward
# passes are start-up (not in the step time) that a benchmark of steps need not pay, and the number of
# trained values, which is what the step costs, is the same.
OURS_METHOD = {
    "full": [],
    "lora": ["--lora.r", str(LORA_R), "--lora.alpha", str(LORA_ALPHA), "--lora.targets", "q,v"],
    "fish": ["--fish.keep", str(KEEP), "--fish.select", "magnitude"],
    "houlsby": ["--houlsby.bottleneck", str(HOULSBY_M)],
    "lst": [],
}
