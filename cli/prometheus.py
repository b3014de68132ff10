"""The daemon's `metrics` result in the Prometheus text exposition format (version 0.0.4).

Model series follow vLLM's names (`vllm:num_requests_running` -> `mgpud:num_requests_running`,
label `model_name`); device series follow DCGM's fields (`DCGM_FI_DEV_FB_USED` ->
`mgpud_dev_fb_used_bytes`, labels `gpu`, `UUID`, `device`), in bytes rather than MiB.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Labels = dict[str, str]


@dataclass
class _Family:
    kind: str  # gauge or counter
    help: str
    samples: list[tuple[Labels, float]] = field(default_factory=list)


class Exposition:
    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def add(self, name: str, kind: str, help: str, value: float | None, labels: Labels) -> None:
        """One sample; a reading the daemon does not have (None) is left out, not zeroed."""
        family = self._families.setdefault(name, _Family(kind, help))
        if value is not None:
            family.samples.append((labels, float(value)))

    def render(self) -> str:
        lines = []
        for name, family in self._families.items():
            if not family.samples:
                continue
            lines += [f"# HELP {name} {family.help}", f"# TYPE {name} {family.kind}"]
            lines += [f"{name}{_labels(labels)} {_number(value)}" for labels, value in family.samples]
        return "\n".join(lines) + "\n"


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    escaped = (v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for v in labels.values())
    return "{" + ",".join(f'{k}="{v}"' for k, v in zip(labels, escaped)) + "}"


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(round(value, 6))


def exposition(metrics: dict[str, Any]) -> str:
    out = Exposition()
    _daemon(out, metrics["daemon"])
    for name, model in metrics["models"].items():
        _model(out, name, model)
    for device in metrics["devices"]:
        _device(out, device)
    return out.render()


def _daemon(out: Exposition, d: dict[str, Any]) -> None:
    out.add("mgpud_daemon_uptime_seconds", "gauge", "Seconds since the daemon started.", d["uptime_s"], {})
    out.add("mgpud_daemon_generations_running", "gauge", "Generations in progress, all models.",
            d.get("generations_running"), {})
    for op, n in d["requests_total"].items():
        out.add("mgpud_daemon_requests_total", "counter", "Control requests received, by operation.", n, {"op": op})
    for code, n in d["errors_total"].items():
        out.add("mgpud_daemon_errors_total", "counter", "Error replies sent, by code.", n, {"code": code})
    out.add("mgpud_daemon_malformed_messages_total", "counter", "Messages refused as malformed.",
            d["malformed_total"], {})
    out.add("mgpud_daemon_dropped_messages_total", "counter", "Replies dropped (client gone or too slow).",
            d["dropped_total"], {})


_MODEL_STATS = (  # (series, type, help, key in the engine's stats)
    ("mgpud:num_requests_running", "gauge", "Requests in the running batch.", "running"),
    ("mgpud:num_requests_waiting", "gauge", "Requests waiting to be scheduled.", "waiting"),
    ("mgpud:kv_cache_blocks_used", "gauge", "KV cache blocks holding tokens.", "kv_blocks_used"),
    ("mgpud:kv_cache_blocks_total", "gauge", "KV cache blocks allocated.", "kv_blocks_total"),
    ("mgpud:prompt_tokens_total", "counter", "Prompt tokens processed.", "prompt_tokens_total"),
    ("mgpud:generation_tokens_total", "counter", "Tokens generated.", "generation_tokens_total"),
    ("mgpud:num_preemptions_total", "counter", "Sequences preempted for lack of KV cache.", "preemptions"),
    ("mgpud:prefix_cache_queries_total", "counter", "Prompt blocks looked up in the prefix cache.",
     "prefix_cache_queries"),
    ("mgpud:prefix_cache_hits_total", "counter", "Prompt blocks found in the prefix cache.", "prefix_cache_hits"),
    ("mgpud:request_success_total", "counter", "Generations finished.", "requests_finished"),
    ("mgpud:request_failure_total", "counter", "Generations that failed.", "requests_failed"),
    ("mgpud:generation_tokens_per_second", "gauge", "Tokens generated per second over the last 10 s.",
     "tokens_per_s_10s"),
    ("mgpud:num_requests_held", "gauge", "Requests held in the model's queue while no replica takes them.",
     "held"),
)
_LATENCIES = (  # (series, help, key prefix in the stats): vLLM's latency names, as quantiles
    ("mgpud:time_to_first_token_seconds", "Time to first token.", "ttft"),
    ("mgpud:time_per_output_token_seconds", "Time between output tokens.", "tpot"),
    ("mgpud:e2e_request_latency_seconds", "Request latency, arrival to last token.", "e2e"),
    ("mgpud:request_queue_time_seconds", "Time from arrival to first scheduling.", "queue"),
)


def _model(out: Exposition, name: str, m: dict[str, Any]) -> None:
    labels = {"model_name": name}
    stats = m.get("stats") or {}  # none while loading
    out.add("mgpud:model_info", "gauge", "1 per model; its shape and state in the labels.", 1,
            {**labels, "tp": str(m["tp"]), "dp": str(m["dp"]), "state": m["state"]})
    out.add("mgpud:num_replicas_ready", "gauge", "Replicas serving.",
            sum(r["state"] == "ready" for r in stats.get("replicas", [])), labels)
    for series, kind, help, key in _MODEL_STATS:
        out.add(series, kind, help, stats.get(key), labels)
    used, total = stats.get("kv_blocks_used"), stats.get("kv_blocks_total")
    out.add("mgpud:kv_cache_usage_perc", "gauge", "KV cache usage, 1 = full.",
            used / total if total else None, labels)
    for series, help, key in _LATENCIES:
        for q in ("50", "95", "99"):
            ms = stats.get(f"{key}_p{q}_ms")
            out.add(series, "gauge", f"{help} Quantiles over recent requests.",
                    None if ms is None else ms / 1000, {**labels, "quantile": f"0.{q}"})


_DEVICE_READINGS = (  # (series, help, key in the device map)
    ("mgpud_dev_fb_total_bytes", "Device memory capacity.", "memory_total"),
    ("mgpud_dev_fb_used_bytes", "Device memory in use (CPU devices: the workers' RSS).", "memory_used"),
    ("mgpud_dev_fb_free_bytes", "Device memory free.", "memory_free"),
    ("mgpud_dev_gpu_util", "Utilization, percent.", "utilization"),
    ("mgpud_dev_gpu_temp", "Temperature, degrees Celsius.", "temperature"),
    ("mgpud_dev_power_usage", "Power draw, watts.", "power"),
)
_DEVICE_SPLIT = (  # (series, help, key in the device's memory breakdown)
    ("mgpud_dev_weights_bytes", "Model weights on the device.", "weights"),
    ("mgpud_dev_kv_cache_bytes", "KV cache allocated on the device.", "kv_allocated"),
    ("mgpud_dev_kv_cache_used_bytes", "KV cache holding tokens.", "kv_used"),
    ("mgpud_dev_activations_bytes", "Activation workspace measured at load.", "activations"),
)


def _device(out: Exposition, d: dict[str, Any]) -> None:
    labels = {"gpu": str(d["index"]), "UUID": d.get("uuid") or "", "device": d["id"],
              "device_name": d["name"], "model_name": d.get("model") or "",
              "replica": "" if d.get("replica") is None else str(d["replica"])}
    for series, help, key in _DEVICE_READINGS:
        out.add(series, "gauge", help, d.get(key), labels)
    for series, help, key in _DEVICE_SPLIT:
        out.add(series, "gauge", help, (d.get("memory") or {}).get(key), labels)
