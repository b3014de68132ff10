"""Operations, their arguments, and validation of incoming requests.

One `Op` per operation: its arguments with types, bounds and defaults. Requests are
validated once, by the daemon at its door (`parse_request`, which calls `check_args`):
clients send what they are given, and the daemon's `bad_request` reply comes back to
them as a BadRequest with the same message. Other layers read the specs without
validating: the CLI derives its option types and ranges from them (mgpud.cli.params),
the daemon checks its configuration and state file with `check_args`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import BadRequest
from .framing import PROTOCOL_VERSION, RequestId, speaks_our_version, unpack

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_ID_CHARS = 128
MAX_STR_CHARS = 4096
MAX_LIST_ITEMS = 1024
MAX_PROMPT_CHARS = 2 * 1024 * 1024
MAX_PROMPT_TOKENS = 1 << 20
MAX_MESSAGES = 4096
ID_SLICE = 1 << 15  # token ids checked per pass
DTYPES = ("float32", "bfloat16", "float16", "fp32", "bf16", "fp16")
QUANTIZATIONS = ("int8", "fp8")
KV_CACHE_DTYPES = ("auto", "fp8")


@dataclass(frozen=True)
class Arg:
    kind: str  # a key of CHECKS
    required: bool = False
    default: Any = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the bound `low` itself is not allowed
    choices: tuple[str, ...] = ()
    help: str = ""


@dataclass(frozen=True)
class Op:
    summary: str
    args: dict[str, Arg] = field(default_factory=dict)
    streams: bool = False  # sends "frame" messages before its result
    exactly_one_of: tuple[str, ...] = ()
    at_least_one_of: tuple[str, ...] = ()


@dataclass(frozen=True)
class Request:
    id: RequestId
    op: str
    args: dict[str, Any]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_request_id(v: Any) -> bool:
    return (isinstance(v, str) and 0 < len(v) <= MAX_ID_CHARS) or (_is_int(v) and -(1 << 63) <= v < 1 << 64)


def _is_str_list(v: Any) -> bool:
    return (isinstance(v, list) and len(v) <= MAX_LIST_ITEMS
            and all(isinstance(s, str) and 0 < len(s) <= MAX_STR_CHARS for s in v))


def _is_prompt(v: Any) -> bool:
    if isinstance(v, str):
        return len(v) <= MAX_PROMPT_CHARS
    return isinstance(v, list) and 0 < len(v) <= MAX_PROMPT_TOKENS and _are_token_ids(v)


def _are_token_ids(v: list[Any]) -> bool:
    # C-speed passes (set, min, max; a generator took 0.7 s for 2^20 ids) over slices: the
    # daemon parses a large request in a thread, which lets go of the GIL only between them.
    for i in range(0, len(v), ID_SLICE):
        part = v[i:i + ID_SLICE]
        if set(map(type, part)) != {int} or min(part) < 0 or max(part) >= 1 << 31:
            return False
    return True


def _is_message(m: Any) -> bool:
    return (isinstance(m, dict) and set(m) <= {"role", "content"}
            and isinstance(m.get("role"), str) and len(m["role"]) <= 64
            and isinstance(m.get("content"), str) and len(m["content"]) <= MAX_PROMPT_CHARS)


CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str) and len(v) <= MAX_STR_CHARS, "a string"),
    "name": (lambda v: isinstance(v, str) and NAME_RE.fullmatch(v) is not None,
             "a name of 1-64 letters, digits, '.', '_' or '-' starting with a letter or digit"),
    "int": (_is_int, "an integer"),
    "float": (lambda v: (_is_int(v) or isinstance(v, float)) and math.isfinite(v), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str_list": (_is_str_list, f"a list of at most {MAX_LIST_ITEMS} non-empty strings"),
    "prompt": (_is_prompt, "a string or a non-empty list of token ids"),
    "messages": (lambda v: isinstance(v, list) and 0 < len(v) <= MAX_MESSAGES and all(map(_is_message, v)),
                 "a non-empty list of {role, content} maps of strings"),
    "request_id": (_is_request_id, f"a string of at most {MAX_ID_CHARS} characters or an integer"),
}


_ENGINE_LIMITS = {
    "max_model_len": Arg("int", low=1, high=1 << 24, help="longest sequence (prompt + output), tokens"),
    "max_num_seqs": Arg("int", low=1, high=1 << 16, help="most sequences in one batch"),
    "max_num_batched_tokens": Arg("int", low=1, high=1 << 24, help="most tokens in one engine step"),
    "memory_utilization": Arg("float", low=0.0, low_open=True, high=1.0,
                              help="fraction of each device's memory the model may use"),
    "kv_cache_memory": Arg("int", low=1, help="KV cache bytes per rank; overrides profiling"),
    "dtype": Arg("str", choices=DTYPES, help="weights and activations dtype; default fp32 on CPU, bf16 on GPU"),
    "enable_expert_parallel": Arg("bool", help="MoE models: each rank holds whole experts (expert e of E on "
                                               "rank e * tp // E) instead of a slice of every expert"),
    "quantization": Arg("str", choices=QUANTIZATIONS,
                        help="quantize the linear layers' and the LM head's weights at load, one scale per "
                             "output channel (a tied embedding shares the LM head's; norms keep the dtype)"),
    "kv_cache_dtype": Arg("str", choices=KV_CACHE_DTYPES, help="KV cache: auto = the dtype; fp8 (e4m3) halves it"),
}

OPS: dict[str, Op] = {
    "ping": Op("Answer at once; proves the daemon's loop is alive."),
    "version": Op("Daemon, protocol and Python versions."),
    "status": Op("Daemon state, uptime, sockets, a summary of devices and models."),
    "devices": Op("Every device with its memory breakdown and the model holding it."),
    "models": Op("Every model with its shape, state and figures."),
    "catalog": Op("The models on disk a load could name, with size, architecture and whether one fits here."),
    "metrics": Op(
        "Counters and gauges of the daemon and of each model.",
        {"format": Arg("str", default="json", choices=("json", "prometheus"),
                       help="prometheus: the text GET /metrics serves, as {content_type, text}")},
    ),
    "load": Op(
        "Load a model; streams progress frames unless wait is false.",
        {
            "model": Arg("str", required=True,
                         help="a model directory, a Hugging Face id in the local hub cache, or 'demo'"),
            "name": Arg("name", help="the name to serve it under; default: the directory's name"),
            "tp": Arg("int", default=0, low=0, high=1024, help="tensor-parallel degree; 0 = automatic"),
            "dp": Arg("int", default=0, low=0, high=1024, help="data-parallel replicas; 0 = automatic"),
            "devices": Arg("str_list", help="devices to use, e.g. ['cpu:0', 'cpu:1'] or ['0', '1']"),
            **_ENGINE_LIMITS,
            "enforce_eager": Arg("bool", default=False,
                                 help="run every GPU step eagerly: no CUDA graphs for decode (saves their memory)"),
            "wait": Arg("bool", default=True, help="false: reply at once and load in the background"),
        },
        streams=True,
    ),
    "unload": Op(
        "Unload a model; waits for its running generations unless force is set.",
        {"name": Arg("name", required=True), "force": Arg("bool", default=False, help="cancel running generations")},
    ),
    "reconfigure": Op(
        "Change a loaded model's shape (tp, dp) while it serves; streams progress and replica events.",
        {"name": Arg("name", required=True), "tp": Arg("int", low=1, high=1024), "dp": Arg("int", low=1, high=1024),
         "enable_expert_parallel": Arg("bool", help="MoE models: true places whole experts on ranks, false "
                                                    "shards every expert; omitted: as it is")},
        streams=True,
        at_least_one_of=("tp", "dp", "enable_expert_parallel"),
    ),
    "generate": Op(
        "Generate text; streams token frames unless stream is false, then a final result.",
        {
            "model": Arg("name", required=True, help="the name of a loaded model"),
            "prompt": Arg("prompt", help="text, or a list of token ids"),
            "messages": Arg("messages", help="chat messages, formatted with the model's chat template"),
            "max_tokens": Arg("int", low=1, high=1 << 20),
            "temperature": Arg("float", low=0.0, high=100.0, help="0 = greedy"),
            "top_p": Arg("float", low=0.0, low_open=True, high=1.0),
            "top_k": Arg("int", low=0, high=1 << 20, help="0 = no top-k"),
            "seed": Arg("int", low=0, high=(1 << 63) - 1),
            "stop": Arg("str_list", help="strings that end the generation (not included in the text)"),
            "ignore_eos": Arg("bool", help="keep generating past the end-of-sequence token"),
            "logprobs": Arg("int", low=0, high=20,
                            help="each new token's log-probability, with this many likeliest tokens"),
            "prompt_logprobs": Arg("int", low=0, high=20,
                                   help="each prompt token's log-probability, with this many likeliest tokens"),
            "stream": Arg("bool", default=True, help="false: no token frames, only the final result"),
        },
        streams=True,
        exactly_one_of=("prompt", "messages"),
    ),
    "cancel": Op(
        "Cancel running generations: one sent on this connection (id), one of any client (request), "
        "a model's, or all.",
        {
            "id": Arg("request_id", help="the id of a generate request sent on this connection"),
            "request": Arg("str", help="a generation's daemon-wide id (request_id; `mgpud ps` lists them)"),
            "model": Arg("name", help="every running generation of this model"),
            "all": Arg("bool", help="every running generation"),
        },
        exactly_one_of=("id", "request", "model", "all"),
    ),
    "plan": Op(
        "The planner's verdict for a load, or a reshape of a loaded model, on the devices it could use.",
        {
            "model": Arg("str", help="a model directory, config.json, preset name or 'demo'; "
                                     "default: the named model's"),
            "name": Arg("name", help="a loaded model to reshape: its devices count as available"),
            "tp": Arg("int", low=0, high=1024, help="the tensor-parallel degree to judge; 0 = automatic; "
                                                    "default: automatic, or the named model's"),
            "dp": Arg("int", low=0, high=1024, help="the replicas to judge; 0 = automatic; "
                                                    "default: automatic, or the named model's"),
            **_ENGINE_LIMITS,
            "dtype": Arg("str", choices=DTYPES + ("fp8", "int8"), help="weights dtype"),
            "concurrency": Arg("int", low=1, high=1 << 16, help="sequences of max_model_len to hold at once"),
        },
        at_least_one_of=("model", "name"),
    ),
    "shutdown": Op(
        "Stop the daemon: finish running generations (up to timeout seconds), then exit.",
        {"timeout": Arg("float", low=0.0, high=86400.0, help="seconds; default: the configured shutdown_timeout")},
    ),
}


# Key lists other layers use, derived from the ops above so that each is stated once.
ENGINE_LIMIT_KEYS = tuple(_ENGINE_LIMITS)  # the engine limits a load (and a plan) takes
SAMPLING_KEYS = tuple(k for k in OPS["generate"].args if k not in ("model", "prompt", "messages", "stream"))


def _check_value(op: str, name: str, spec: Arg, value: Any) -> None:
    check, expected = CHECKS[spec.kind]
    where = f"{op}: argument '{name}'"
    if not check(value):
        raise BadRequest(f"{where} must be {expected}, got {_show(value)}")
    if spec.choices and value not in spec.choices:
        raise BadRequest(f"{where} must be one of {', '.join(spec.choices)}, got {_show(value)}")
    if spec.low is not None and (value < spec.low or (spec.low_open and value == spec.low)):
        raise BadRequest(f"{where} must be {'>' if spec.low_open else '>='} {spec.low}, got {value}")
    if spec.high is not None and value > spec.high:
        raise BadRequest(f"{where} must be <= {spec.high}, got {value}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_args(op: str, args: dict[str, Any]) -> dict[str, Any]:
    """Validate `args` for `op`; return them with defaults filled in. Raises BadRequest."""
    spec = OPS.get(op)
    if spec is None:
        raise BadRequest(f"unknown operation {_show(op)}; known: {', '.join(sorted(OPS))}")
    unknown = [k for k in args if k not in spec.args]
    if unknown:
        known = ", ".join(spec.args) or "none"
        raise BadRequest(f"{op}: unknown argument {_show(unknown[0])}; accepted: {known}")
    out: dict[str, Any] = {}
    for name, arg in spec.args.items():
        value = args.get(name)
        if value is None:
            if arg.required:
                raise BadRequest(f"{op}: argument '{name}' is required")
            out[name] = arg.default
            continue
        _check_value(op, name, arg, value)
        out[name] = value
    given = [k for k in spec.exactly_one_of if out.get(k) is not None]
    if spec.exactly_one_of and len(given) != 1:
        raise BadRequest(f"{op}: give exactly one of {' or '.join(spec.exactly_one_of)}")
    if spec.at_least_one_of and not any(out.get(k) is not None for k in spec.at_least_one_of):
        raise BadRequest(f"{op}: give at least one of {', '.join(spec.at_least_one_of)}")
    return out


def parse_request(data: bytes) -> Request:
    """Decode and validate one request message. Raises BadRequest."""
    try:
        msg = unpack(data)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if not isinstance(msg, dict):
        raise BadRequest(f"a request must be a msgpack map, got {type(msg).__name__}")
    req_id = msg.get("id")
    if not _is_request_id(req_id):
        raise BadRequest(f"'id' must be {CHECKS['request_id'][1]}, got {_show(req_id)}")
    if not speaks_our_version(msg.get("v")):
        raise BadRequest(f"protocol version {_show(msg.get('v'))} is not supported; "
                         f"this daemon speaks v={PROTOCOL_VERSION} (an integer)", req_id)
    op, args = msg.get("op"), msg.get("args", {})
    if not isinstance(op, str):
        raise BadRequest(f"'op' must be a string, got {_show(op)}", req_id)
    if not isinstance(args, dict):
        raise BadRequest(f"'args' must be a map, got {_show(args)}", req_id)
    try:
        return Request(req_id, op, check_args(op, args))
    except BadRequest as exc:
        exc.req_id = req_id
        raise
