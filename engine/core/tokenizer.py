"""Tokenizer, chat template and streaming detokenization for a model directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as _HFTokenizer

from ..exceptions import InvalidRequest, ModelLoadError
from ..jsonfile import read_json

# Tokens of the prompt's tail decoded with the output, so the first output token gets the
# spacing it would have in context (SentencePiece strips a leading space otherwise).
_CONTEXT_TOKENS = 6


def _read_json(path: Path) -> dict[str, Any]:
    return read_json(path) if path.is_file() else {}


def _token_text(value: Any) -> str:
    return value.get("content", "") if isinstance(value, dict) else (value or "")


def _raise(message: str) -> None:
    import jinja2

    raise jinja2.TemplateError(message)


def _chat_template(text: str) -> Any:
    """The compiled chat template. jinja2 is imported here, not with the module: worker
    processes import this module (for the Detokenizer type) and never render a chat."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    env.filters["tojson"] = lambda v, indent=None: json.dumps(v, indent=indent, ensure_ascii=False)
    return env.from_string(text)


class Tokenizer:
    def __init__(self, model_dir: Path):
        file = model_dir / "tokenizer.json"
        if not file.is_file():
            raise ModelLoadError(f"{file} is missing: mgpud needs the fast-tokenizer file "
                                 "tokenizer.json (save the tokenizer with transformers to produce it)")
        self._tok = _HFTokenizer.from_file(str(file))
        cfg = _read_json(model_dir / "tokenizer_config.json")
        template_file = model_dir / "chat_template.jinja"
        template = template_file.read_text() if template_file.is_file() else cfg.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        self._template = _chat_template(template) if template else None
        self.bos_token = _token_text(cfg.get("bos_token"))
        self.eos_token = _token_text(cfg.get("eos_token"))
        self.eos_ids = self._eos_ids(model_dir)

    def _eos_ids(self, model_dir: Path) -> frozenset[int]:
        ids: set[int] = set()
        for name in ("generation_config.json", "config.json"):
            value = _read_json(model_dir / name).get("eos_token_id")
            ids.update(value if isinstance(value, list) else [value] if value is not None else [])
        if self.eos_token and self._tok.token_to_id(self.eos_token) is not None:
            ids.add(self._tok.token_to_id(self.eos_token))
        return frozenset(ids)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, special: bool = True) -> list[int]:
        # encode_batch releases the GIL while it works (encode holds it: 5 s for 2 MiB of
        # text), so a long prompt tokenized in a thread leaves the daemon's loop running.
        return self._tok.encode_batch([text], add_special_tokens=special)[0].ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        import jinja2

        if self._template is None:
            raise InvalidRequest("this model has no chat template; send a plain prompt instead of messages")
        try:
            return self._template.render(messages=messages, add_generation_prompt=True,
                                         bos_token=self.bos_token, eos_token=self.eos_token)
        except jinja2.TemplateError as exc:
            raise InvalidRequest(f"chat template refused the messages: {exc}") from None

    def detokenizer(self, prompt_ids: list[int]) -> Detokenizer:
        return Detokenizer(self, prompt_ids[-_CONTEXT_TOKENS:])


class Detokenizer:
    """Turns a growing list of token ids into text pieces, never splitting a character."""

    def __init__(self, tokenizer: Tokenizer, context: list[int]):
        self._tok = tokenizer
        self._ids = list(context)
        self._prefix = 0
        self._read = len(context)

    def push(self, new_ids: list[int]) -> str:
        self._ids.extend(new_ids)
        before = self._tok.decode(self._ids[self._prefix:self._read])
        after = self._tok.decode(self._ids[self._prefix:])
        if after.endswith("\ufffd") or len(after) <= len(before):
            return ""  # an incomplete UTF-8 sequence: wait for the next token
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before):]
