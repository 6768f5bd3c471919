"""A tiny random Llama (2 layers, hidden 32) with a byte-level BPE tokenizer trained offline on the quickstart
corpus: the model of the tests and the CPU benchmarks. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

from prefopt.raft import ANSWER_TAG, BEGIN_QUOTE, END_QUOTE
from prefopt.resources import QUICKSTART

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_tiny_model(path: Path) -> str:
    """Build it in `path` (or reuse what is there) and return the path."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from prefopt.data import read_jsonl

    path = Path(path)
    if (path / "config.json").is_file():
        return str(path)
    texts = [d["text"] for d in read_jsonl(QUICKSTART / "corpus.jsonl")]
    texts += [q["question"] for q in read_jsonl(QUICKSTART / "questions.jsonl")]
    texts += [f"##Reason: The document says {BEGIN_QUOTE} {END_QUOTE} {ANSWER_TAG} Answer from the documents"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<pad>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=special,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = CHATML
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         pad_token_id=fast.pad_token_id, eos_token_id=fast.eos_token_id,
                         bos_token_id=fast.bos_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    return str(path)
