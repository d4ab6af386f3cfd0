"""A tiny Llama with its own tokenizer, trained for seconds on the tiny suite's facts.

It stands in for a real checkpoint on machines without a GPU or the Hugging Face hub: every tool in
the chain (transformers, llm-compressor, lm-eval's hf backend, `transformers serve`, GuideLLM's
tokenizer) loads it from a plain directory.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from automation.scripts.lib import dir_size_bytes, hub_access, peak_rss_mb, write_json

SUITE_DIR = Path(__file__).resolve().parents[2] / "standards" / "suites" / "tiny"
SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}
# hidden 128 keeps W4A16 group size 128 valid; 4 heads -> head_dim 32.
ARCH: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tiny_corpus(suite_dir: Path = SUITE_DIR) -> list[str]:
    """The facts of the tiny suite, in the exact surface forms its tasks score.

    Training on the same prompt format ("Q: ...\\nA: answer") is what makes the tiny model's
    accuracy meaningful (near 1.0 instead of chance) and compression losses visible.
    """
    texts: list[str] = []
    for doc in _read_jsonl(suite_dir / "mc.jsonl"):
        texts.append(f"Q: {doc['question']}\nA: {doc['choices'][doc['label']]}\n")
    for doc in _read_jsonl(suite_dir / "gen.jsonl"):
        texts.append(f"Q: {doc['question']}\nA: {doc['answer']}\n")
    texts.extend(doc["text"] for doc in _read_jsonl(suite_dir / "ppl.jsonl"))
    return texts


def train_tokenizer(texts: list[str], vocab_size: int = 512) -> Any:
    """Byte-level BPE (any input text encodes, as GuideLLM's synthetic prompts need), no chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        pad_token=SPECIAL_TOKENS["pad"],
        unk_token=SPECIAL_TOKENS["unk"],
        model_max_length=ARCH["max_position_embeddings"],
    )


def _train(model: Any, tokenizer: Any, texts: list[str], steps: int, lr: float) -> float:
    import torch

    encoded = [[tokenizer.bos_token_id, *tokenizer.encode(t), tokenizer.eos_token_id] for t in texts]
    width = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(encoded):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        # Full batch: the corpus is ~100 short lines, so one step sees every fact.
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optim.zero_grad()
        loss.backward()
        optim.step()
    model.eval()
    return float(loss.detach())


def build_tiny_model(
    out_dir: Path, train_steps: int = 150, seed: int = 0, lr: float = 3e-3
) -> dict[str, Any]:
    """Build, train and save the tiny model + tokenizer under `out_dir`; return a summary."""
    hub_access(needed=False)  # built from scratch with a local tokenizer
    start = time.monotonic()
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    texts = tiny_corpus()
    tokenizer = train_tokenizer(texts)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **ARCH,
    )
    model = LlamaForCausalLM(config)
    train_start = time.monotonic()
    final_loss = _train(model, tokenizer, texts, train_steps, lr) if train_steps > 0 else float("nan")
    train_s = time.monotonic() - train_start
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    result = {
        "model_dir": str(out_dir),
        "architecture": "LlamaForCausalLM",
        "hidden_size": ARCH["hidden_size"],
        "intermediate_size": ARCH["intermediate_size"],
        "vocab_size": len(tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_steps": train_steps,
        "seed": seed,
        "final_loss": round(final_loss, 4),
        "train_s": round(train_s, 2),
        "wall_s": round(time.monotonic() - start, 2),
        "peak_rss_mb": peak_rss_mb(),
        "size_bytes": dir_size_bytes(out_dir),
    }
    write_json(out_dir / "tiny_model.json", result)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(build_tiny_model(args.out, train_steps=args.train_steps, seed=args.seed)))


if __name__ == "__main__":
    main()
