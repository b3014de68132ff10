"""transformers as the reference the engine's outputs are compared with (float32, CPU)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

# Two cores are shared with the engine's workers under test (conftest also sets 1).
TORCH_THREADS = 1


@functools.cache
def _model(model_dir: str) -> Any:
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(TORCH_THREADS)
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@functools.cache
def _tokenizer(model_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def hf_model(model_dir: Path) -> Any:
    """The transformers model of `model_dir`, loaded once per folder."""
    return _model(str(Path(model_dir).resolve()))


def hf_logits(model_dir: Path, ids: list[int]) -> torch.Tensor:
    """float32 [len(ids), vocab] logits of every position, with the ids run alone."""
    with torch.inference_mode():
        out = hf_model(model_dir)(torch.tensor([ids]))
    return out.logits[0].float()


def hf_last_logits(model_dir: Path, prompt_ids: list[int]) -> torch.Tensor:
    """float32 [vocab] logits of the last position, with the prompt run alone."""
    return hf_logits(model_dir, prompt_ids)[-1]


def hf_logprobs(model_dir: Path, ids: list[int]) -> torch.Tensor:
    """float32 [len(ids), vocab] log-probabilities of the next token at every position."""
    return torch.log_softmax(hf_logits(model_dir, ids), -1)


def hf_greedy(model_dir: Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy new tokens, ending with the EOS token where transformers stops on one."""
    model = hf_model(model_dir)
    eos = model.generation_config.eos_token_id
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=eos[0] if isinstance(eos, list) else eos,
        )
    return out[0, len(prompt_ids):].tolist()


def hf_chat_ids(model_dir: Path, messages: list[dict[str, str]]) -> list[int]:
    """The prompt ids of `messages` rendered by the chat template, ready for the reply."""
    tokenizer = _tokenizer(str(Path(model_dir).resolve()))
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # The template already writes every special token; the tokenizer must add none.
    return tokenizer(text, add_special_tokens=False)["input_ids"]
