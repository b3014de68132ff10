"""The default dtype follows the CPU: bf16 only where bf16 matrix instructions exist."""

from __future__ import annotations

import pytest
from mgpud.engine import EngineConfig
from mgpud.engine.hosts import cpu_features, inventory
from mgpud.engine.hosts.cpu_features import parse_flags

ZEN4 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n"
ZEN2 = "processor\t: 0\nflags\t\t: fpu sse avx avx2 fma\nbugs\t\t: sysret_ss_attrs\n"


def test_flags_come_from_the_first_processor() -> None:
    assert "avx512_bf16" in parse_flags(ZEN4)
    assert parse_flags(ZEN2) == {"fpu", "sse", "avx", "avx2", "fma"}
    assert parse_flags("") == frozenset()


@pytest.mark.parametrize("native, on_cuda, dtype, want", [
    (True, False, None, "bfloat16"), (False, False, None, "float32"), (False, False, "auto", "float32"),
    (False, True, None, "bfloat16"), (True, False, "fp32", "float32"), (False, False, "bf16", "bfloat16"),
])
def test_auto_dtype_follows_the_cpu_and_a_name_overrides(monkeypatch: pytest.MonkeyPatch, native: bool,
                                                         on_cuda: bool, dtype: str | None, want: str) -> None:
    monkeypatch.setattr(cpu_features, "native_bf16", lambda: native)
    cfg = EngineConfig(model="m", dtype=dtype)
    cfg.check()
    assert cfg.dtype_name(on_cuda=on_cuda) == want


def test_cpu_devices_say_whether_they_have_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inventory, "native_bf16", lambda: True)
    device = inventory.cpu_devices(1, 1 << 30)[0]
    assert device.native_bf16 and device.name.endswith(", bf16)")
    monkeypatch.setattr(inventory, "native_bf16", lambda: False)
    assert "bf16" not in inventory.cpu_devices(1, 1 << 30)[0].name


def test_the_planner_plans_the_dtype_the_engine_will_load(monkeypatch: pytest.MonkeyPatch) -> None:
    from mgpud.engine.planning.planner import plan

    monkeypatch.setattr(cpu_features, "native_bf16", lambda: True)
    assert plan("SmolLM2-135M", "cpu:1", device_memory=2 << 30).dtype == "bf16"
    monkeypatch.setattr(cpu_features, "native_bf16", lambda: False)
    assert plan("SmolLM2-135M", "cpu:1", device_memory=2 << 30).dtype == "fp32"
