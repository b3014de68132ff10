"""The planner's verdict on one shape, from the daemon's `plan` reply."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .render import size


@dataclass(frozen=True)
class Verdict:
    fits: bool | None  # None: not judged (no plan yet, or the planner failed)
    headline: str
    details: tuple[str, ...] = ()


def pending(text: str = "asking the planner…") -> Verdict:
    return Verdict(None, text)


def judge(plan: dict[str, Any], tp: int, dp: int) -> Verdict:
    """The shape tp x dp (0 = the planner chooses) against `plan`."""
    impossible = plan.get("impossible") or {}
    if tp and str(tp) in impossible:
        return Verdict(False, f"tp {tp} cannot work", (impossible[str(tp)],))
    shape = _pick(plan, tp, dp)
    if shape is None:
        count = plan.get("device_count", "?")
        want = f"tp {tp or 'auto'} x dp {dp or 'auto'}"
        return Verdict(False, f"{want} does not fit on {count} device(s)",
                       (f"tp x dp must be at most {count}, the free devices",))
    chosen = list(plan.get("chosen") or ()) == [shape["tp"], shape["dp"]]
    headline = (f"{'fits' if shape['fits'] else 'does not fit'}: tp {shape['tp']} x dp {shape['dp']}"
                + (" (the planner's choice)" if chosen else ""))
    memory = (f"per device: weights {size(shape.get('weights_per_device'))}, "
              f"KV {size(shape.get('kv_per_device'))} ({shape.get('kv_tokens', '?')} tokens per replica)")
    details = [shape.get("why", ""), memory]
    if shape.get("tokens_per_s"):
        details.append(f"about {shape['tokens_per_s']:.0f} tok/s decode, {shape.get('bound') or '?'}-bound")
    if not tp or not dp:
        details += plan.get("reasons") or []
    return Verdict(bool(shape["fits"]), headline, tuple(d for d in details if d))


def _pick(plan: dict[str, Any], tp: int, dp: int) -> dict[str, Any] | None:
    """The shape the daemon would use: the planner's choice when it matches what is fixed,
    else the smallest fitting tp with the most replicas, else any match."""
    matches = [s for s in plan.get("shapes") or () if (not tp or s["tp"] == tp) and (not dp or s["dp"] == dp)]
    chosen = list(plan.get("chosen") or ())
    for s in matches:
        if [s["tp"], s["dp"]] == chosen:
            return s
    fitting = [s for s in matches if s["fits"]]
    if fitting:
        return min(fitting, key=lambda s: (s["tp"], -s["dp"]))
    return matches[0] if matches else None
