"""bench/hf_t5_memory.py BATCH — HF T5 (t5-small shape, random init, bf16) + PEFT LoRA r 8 q,v on the CPU: two
training steps at BATCH x 128 tokens, then the peak RSS (activation memory = peak at batch 16 minus batch 1).
The counterpart of `deltatune train --model t5-small --train.dtype bf16 --method lora` for the same numbers."""
import sys, resource, torch
from transformers import T5Config, T5ForConditionalGeneration
from peft import LoraConfig, get_peft_model
torch.set_num_threads(2)
b = int(sys.argv[1])
cfg = T5Config(d_model=512, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8, d_kv=64, vocab_size=32128,
               dropout_rate=0.1, feed_forward_proj="relu", tie_word_embeddings=True)
with torch.device("cpu"):
    m = T5ForConditionalGeneration(cfg).to(torch.bfloat16)
m = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, target_modules=["q", "v"], lora_dropout=0.0))
for n, p in m.named_parameters():
    if p.requires_grad: p.data = p.data.float()
m.train()
opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
ids = torch.randint(3, 32000, (b, 128)); dec = torch.zeros(b, 1, dtype=torch.long); lab = torch.randint(3, 32000, (b, 1))
for _ in range(2):
    out = m(input_ids=ids, decoder_input_ids=dec, labels=lab)
    out.loss.backward(); opt.step(); opt.zero_grad()
print("hf b=%d maxrss %d KB" % (b, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
