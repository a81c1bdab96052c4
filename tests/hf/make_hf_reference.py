#!/usr/bin/env python3
"""Hugging Face transformers as an independent reference for deltatune's backbones (ctest fixture).

    .venv/bin/python tests/hf/make_hf_reference.py OUT_DIR [--minilm models/all-minilm-l6-v2]

Writes, for each case, OUT_DIR/<case>/ as HF itself saves a model (save_pretrained: model.safetensors +
config.json) and OUT_DIR/<case>/reference.safetensors with the inputs and HF's outputs, computed by
transformers in float32, eval mode:
  bert-tiny      BertForSequenceClassification (3 labels), random weights: hidden.<i> (block outputs),
                 logits, loss; the file has HF's "bert." prefix and classifier.*.
  t5-v1_0-tiny   T5ForConditionalGeneration, ReLU FFN, tied embeddings (v1.0): encoder.hidden.<i> and
  t5-v1_1-tiny   decoder.hidden.<i> (block outputs but the last, which HF reports after the final norm),
                 LM logits and loss with the decoder input = labels shifted right; gated-GELU, untied (v1.1).
  llama-tiny     LlamaForCausalLM (GQA, untied): hidden.<i> (but the last), LM logits and loss (-100 on pads).
  llama-tiny-cls LlamaForSequenceClassification on the same base weights: logits at the last non-pad token.
  minilm         the real all-MiniLM-L6-v2 weights (BertModel), real sentences tokenized by HF's BertTokenizer:
                 hidden.<i>, pooled; token ids (our WordPiece must give the same).
tests/model/test_hf_reference.cpp loads each directory with model::load_backbone and compares.
"""
import argparse
import json
import os
import sys

import torch

try:
    import transformers
    from safetensors.torch import save_file
except ImportError as e:  # setup.sh installs them; say what is missing
    sys.exit(f"make_hf_reference.py: {e}; scripts/setup.sh installs transformers and peft into .venv")

SENTENCES = [
    "it 's a charming and often affecting journey .",
    "the movie is a disaster : unwatchable , unfunny and far too long",
    "A gorgeous, witty, seductive movie.",
]


def save(model, out, name, tensors, info):
    d = os.path.join(out, name)
    model.save_pretrained(d, safe_serialization=True)
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, os.path.join(d, "reference.safetensors"))
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(info, f, indent=1)


def ids_and_mask(gen, vocab, lengths, T):
    ids = torch.randint(1, vocab, (len(lengths), T), generator=gen)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        ids[b, n:] = 0  # right padding with the pad id
    return ids, mask


@torch.no_grad()
def bert_tiny(out, gen):
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=32, max_position_embeddings=32, type_vocab_size=2,
                                  num_labels=3, hidden_act="gelu")
    torch.manual_seed(1)
    m = transformers.BertForSequenceClassification(cfg).eval()
    ids, mask = ids_and_mask(gen, 64, [7, 5], 7)
    labels = torch.tensor([2, 0])
    r = m(input_ids=ids, attention_mask=mask, labels=labels, output_hidden_states=True)
    t = {"input_ids": ids, "attention_mask": mask, "labels": labels, "logits": r.logits, "loss": r.loss}
    for i, h in enumerate(r.hidden_states[1:]):
        t[f"hidden.{i}"] = h
    save(m, out, "bert-tiny", t, {"hidden": cfg.num_hidden_layers, "num_labels": 3})


@torch.no_grad()
def t5_tiny(out, gen, name, v1_1):
    cfg = transformers.T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=24 if v1_1 else 32, num_layers=2,
                                num_decoder_layers=3 if v1_1 else 2, num_heads=4, relative_attention_num_buckets=8,
                                relative_attention_max_distance=16, dropout_rate=0.0,
                                feed_forward_proj="gated-gelu" if v1_1 else "relu", tie_word_embeddings=not v1_1,
                                pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(2 if v1_1 else 3)
    m = transformers.T5ForConditionalGeneration(cfg).eval()
    ids, mask = ids_and_mask(gen, 64, [6, 4], 6)
    labels = torch.randint(2, 64, (2, 3), generator=gen)
    labels[1, 2] = -100  # ignored position
    r = m(input_ids=ids, attention_mask=mask, labels=labels, output_hidden_states=True)
    t = {"input_ids": ids, "attention_mask": mask, "labels": labels, "logits": r.logits, "loss": r.loss}
    # HF reports the last block's output after the final layer norm: compare the others.
    for i, h in enumerate(r.encoder_hidden_states[1:-1]):
        t[f"encoder.hidden.{i}"] = h
    for i, h in enumerate(r.decoder_hidden_states[1:-1]):
        t[f"decoder.hidden.{i}"] = h
    save(m, out, name, t, {"encoder_hidden": cfg.num_layers - 1, "decoder_hidden": cfg.num_decoder_layers - 1})
    if v1_1:
        # transformers 5 always ties T5's lm_head to shared and keeps "v1.1" only as "do not scale the decoder
        # output" (T5Config pops tie_word_embeddings=False into scale_decoder_outputs, then saves
        # tie_word_embeddings: true, which reads back as v1.0 scaling). Write the file as real v1.1 checkpoints
        # are: untied, with lm_head.weight (here equal to shared.weight, which is what HF computed with).
        d = os.path.join(out, name)
        from safetensors.torch import load_file
        weights = load_file(os.path.join(d, "model.safetensors"))
        weights["lm_head.weight"] = m.lm_head.weight.detach().clone()
        save_file(weights, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(d, "config.json")) as f:
            config = json.load(f)
        config["tie_word_embeddings"] = False
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(config, f, indent=2)


@torch.no_grad()
def llama_tiny(out, gen):
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                                   pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(4)
    lm = transformers.LlamaForCausalLM(cfg).eval()
    ids, mask = ids_and_mask(gen, 96, [9, 6], 9)
    labels = ids.masked_fill(mask == 0, -100)
    r = lm(input_ids=ids, attention_mask=mask, labels=labels, output_hidden_states=True)
    t = {"input_ids": ids, "attention_mask": mask, "labels": labels, "logits": r.logits, "loss": r.loss}
    for i, h in enumerate(r.hidden_states[1:-1]):
        t[f"hidden.{i}"] = h
    save(lm, out, "llama-tiny", t, {"hidden": cfg.num_hidden_layers - 1})

    cfg.num_labels = 3
    cls = transformers.LlamaForSequenceClassification(cfg).eval()
    cls.model.load_state_dict(lm.model.state_dict())
    cls_labels = torch.tensor([1, 2])
    r = cls(input_ids=ids, attention_mask=mask, labels=cls_labels)
    save(cls, out, "llama-tiny-cls", {"input_ids": ids, "attention_mask": mask, "labels": cls_labels,
                                      "logits": r.logits, "loss": r.loss}, {"num_labels": 3})


@torch.no_grad()
def minilm(out, model_dir):
    tok = transformers.BertTokenizer(os.path.join(model_dir, "vocab.txt"), do_lower_case=True)
    m = transformers.BertModel.from_pretrained(model_dir).eval()
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    r = m(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True)
    t = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "pooled": r.pooler_output}
    for i, h in enumerate(r.hidden_states[1:]):
        t[f"hidden.{i}"] = h
    d = os.path.join(out, "minilm")
    os.makedirs(d, exist_ok=True)
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(d, "reference.safetensors"))
    info = {"hidden": m.config.num_hidden_layers, "sentences": SENTENCES, "model_dir": os.path.abspath(model_dir),
            "num_parameters": m.num_parameters()}
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(info, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--minilm", default=None, help="a directory with model.safetensors, config.json, vocab.txt")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    gen = torch.Generator().manual_seed(1234)
    bert_tiny(args.out, gen)
    t5_tiny(args.out, gen, "t5-v1_0-tiny", v1_1=False)
    t5_tiny(args.out, gen, "t5-v1_1-tiny", v1_1=True)
    llama_tiny(args.out, gen)
    if args.minilm:
        if not os.path.exists(os.path.join(args.minilm, "model.safetensors")):
            sys.exit(f"make_hf_reference.py: {args.minilm}/model.safetensors is missing: run scripts/fetch-models.sh")
        minilm(args.out, args.minilm)
    print(f"make_hf_reference.py: transformers {transformers.__version__}, torch {torch.__version__}: "
          f"wrote {sorted(os.listdir(args.out))} to {args.out}")


if __name__ == "__main__":
    main()
