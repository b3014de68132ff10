"""Planner formulas against hand-computed numbers, the auto TP/DP choice, and the presets."""

from __future__ import annotations

import json
import sys

import pytest

from mgpud.engine.hosts import hardware
from mgpud.engine.config import ModelConfig
from mgpud.engine.hosts.inventory import DeviceSpecError
from mgpud.engine.planning.planner import (ParamGroups, PlanError, activation_peak_bytes, allreduce_bytes_per_token, decode_step,
                                  kv_bytes_per_token, param_groups, plan, weight_bytes)
from mgpud.cli.plan import format_table
from mgpud.engine.hosts.hardware import HARDWARE, Hardware
from mgpud.engine.planning.presets import model_preset
from mgpud.engine.planning.targets import DeviceSet, describe, device_set
from mgpud.units import fmt_bytes

from fake_nvml import FakeGpu, FakeNvml

MiB, GiB = 1 << 20, 1 << 30

SMOLLM2 = {"architectures": ["LlamaForCausalLM"], "hidden_size": 576, "intermediate_size": 1536,
           "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
           "vocab_size": 49152, "tie_word_embeddings": True, "max_position_embeddings": 8192}

L8, L70 = model_preset("Llama-3.1-8B"), model_preset("Llama-3.1-70B")


@pytest.mark.parametrize("name, params", [
    ("Llama-3.1-8B", 8_030_261_248), ("Llama-3.1-70B", 70_553_706_496),
    ("meta-llama/Llama-3.1-70B-Instruct", 70_553_706_496), ("Mistral-7B", 7_248_023_552),
    ("mistralai/Mistral-7B-Instruct-v0.3", 7_248_023_552),
    ("Mixtral-8x7B", 46_702_792_704), ("SmolLM2-135M", 134_515_008), ("demo", 134_515_008),
])
def test_presets_have_the_published_parameter_counts(name, params):
    assert model_preset(name).param_count() == params


def test_qwen_preset_and_unknown_name():
    qwen = model_preset("Qwen2.5-72B")
    assert (qwen.qkv_bias, qwen.num_kv_heads, qwen.vocab_size) == (True, 8, 152064)
    assert model_preset("Llama-9-1T") is None


def test_llama_8b_formulas():
    # 32 layers x (4096 x 6144 qkv + 4096^2 o + 3 x 4096 x 14336 mlp); 2 x 128256 x 4096 embed + head;
    # 65 norms of 4096.
    assert param_groups(L8) == ParamGroups(6_979_321_856, 1_050_673_152, 266_240)
    assert weight_bytes(L8, "fp16", 1) == 16_060_522_496  # the seed's "~16 GB"
    assert kv_bytes_per_token(L8, "fp16", 1) == 2 * 32 * 8 * 128 * 2 == 131_072
    assert kv_bytes_per_token(L8, "fp8", 1) == 131_072  # KV stays 16-bit under 8-bit weights
    assert kv_bytes_per_token(L8, "fp32", 2) == 131_072  # fp32 KV, half the KV heads per rank


def test_llama_8b_fp16_fits_one_40gb_card():
    p = plan("Llama-3.1-8B", "1xA100-40GB", dtype="fp16", max_model_len=8192)
    assert p.budget == int(40960 * MiB * 0.9) - 1 * GiB == 37_580_963_840
    [shape] = p.shapes
    assert shape.fits and p.chosen == (1, 1) and p.ok
    # Activations of the profile step (2048 tokens, 256 logit rows), fp16:
    #   2048 x (6 x 4096 + 48 x 128 + 3 x 14336) x 2 B x 2 (slack) = 603_979_776
    #   + 256 x 128_256 x 4 B = 131_334_144
    assert activation_peak_bytes(L8, "fp16", 1, 2048, 256) == 735_313_920
    # (37_580_963_840 - 16_060_522_496 - 735_313_920) // (131_072 x 16) = 9911 blocks of 16 tokens
    assert shape.kv_tokens == 158_576 and shape.sequences == 158_576 // 8192 == 19


def test_llama_70b_fp16_needs_tp2_on_80gb_cards():
    assert weight_bytes(L70, "fp16", 1) == 141_107_412_992  # the seed's "~140 GB"
    # Everything but the 161 norms of 8192 is split in two.
    assert weight_bytes(L70, "fp16", 2) == (70_553_706_496 - 1_318_912) // 2 * 2 + 1_318_912 * 2
    p = plan("Llama-3.1-70B", "2xA100-80GB", dtype="fp16", max_model_len=8192, concurrency=4)
    tp1 = [s for s in p.shapes if s.tp == 1]
    assert tp1 and not any(s.fits for s in tp1) and "exceed" in tp1[0].why
    assert p.chosen == (2, 1) and p.ok
    assert p.reasons[0].startswith("tp=1: weights 131.4 GiB exceed")


def test_llama_70b_fp8_fits_two_a100_80gb_at_tp2():
    # Linear layers at 1 byte; embeddings, LM head and norms stay 16-bit.
    assert weight_bytes(L70, "fp8", 1) == 68_451_041_280 + 2 * 2_101_346_304 + 2 * 1_318_912  # "~70 GB"
    assert weight_bytes(L70, "fp8", 2) == 36_329_504_768
    p = plan("Llama-3.1-70B", "2xA100-80GB", dtype="fp8", max_model_len=8192)
    assert (p.dtype, p.kv_dtype, p.chosen, p.ok) == ("fp8", "bf16", (2, 1), True)
    assert p.chosen_shape.kv_bytes_per_token == 163_840


def test_allreduce_bytes():
    # 2 all-reduces x 80 layers x 8192 x 2 bytes, of which a ring sends 2(tp-1)/tp.
    assert allreduce_bytes_per_token(L70, "bf16", 1) == 0
    assert allreduce_bytes_per_token(L70, "bf16", 2) == 2_621_440
    assert allreduce_bytes_per_token(L70, "bf16", 8) == 4_587_520
    p = plan("Llama-3.1-70B", "8xH100-80GB", max_model_len=8192, tp=8)
    assert p.chosen_shape.allreduce_bytes_per_step == 4_587_520 * p.chosen_shape.batch


def test_decode_step_by_hand():
    h100 = HARDWARE["H100-80GB"]
    step = decode_step(L8, h100, "bf16", tp=1, batch=16, context=4096)
    flop_per_token = 2 * (6_979_321_856 + 128256 * 4096) + 4 * 4096 * 4096 * 32
    assert step.compute == pytest.approx(16 * flop_per_token / 989e12)
    assert step.memory == pytest.approx((16_060_522_496 + 16 * 4096 * 131_072) / 3.35e12)
    assert (step.comm, step.bound) == (0.0, "memory")
    tp2 = decode_step(L8, h100, "bf16", tp=2, batch=16, context=4096)
    assert tp2.comm == pytest.approx(2 * 32 * (10e-6 + 16 * 4096 * 2 / 450e9))


def test_mixture_of_experts_reads_only_routed_experts_at_batch_one():
    mixtral, h100 = model_preset("Mixtral-8x7B"), HARDWARE["H100-80GB"]
    one = decode_step(mixtral, h100, "bf16", 1, batch=1, context=0)
    many = decode_step(mixtral, h100, "bf16", 1, batch=64, context=0)
    experts = 32 * 3 * 4096 * 14336 * 8 * 2
    assert one.memory == pytest.approx((weight_bytes(mixtral, "bf16", 1) - experts * 0.75) / 3.35e12)
    assert many.memory == pytest.approx(weight_bytes(mixtral, "bf16", 1) / 3.35e12, rel=1e-6)


def test_diminishing_returns_point():
    slow_link = Hardware("slow", 80 * GiB, 1e15, 1e14, 3e12, "test", 1e9, 5e-3)
    pool = DeviceSet("8x slow", "cuda", 8, 80 * GiB, slow_link)
    p = plan("Llama-3.1-8B", pool, max_model_len=4096, tp=4)
    assert p.knee_tp == 1
    assert any("diminishing returns past tp=1" in r and "tp=4 is past it" in r for r in p.reasons)
    fast = plan("Llama-3.1-70B", "8xH100-80GB", max_model_len=8192)
    assert fast.knee_tp in (2, 4, 8) and fast.chosen == (4, 2)


def test_smollm2_on_cpu4_offers_only_tp_1_and_3():
    cfg = ModelConfig.from_dict(SMOLLM2)
    p = plan(cfg, "cpu:4", dtype="fp32", device_memory=2 * GiB, max_model_len=2048, concurrency=4)
    assert {s.tp for s in p.shapes} == {1, 3}
    assert {(s.tp, s.dp) for s in p.shapes} == {(1, 1), (1, 2), (1, 3), (1, 4), (3, 1)}
    assert set(p.impossible) == {2, 4}
    assert "9 attention heads and 3 KV heads cannot be split 2 ways" in p.impossible[2]
    assert "cannot be split 4 ways" in p.impossible[4]
    text = format_table(p)
    assert "tp=2: each rank holds whole heads" in text and "tp=4:" in text
    assert p.chosen == (1, 4) and p.dtype == "fp32"
    assert weight_bytes(cfg, "fp32", 1) == 134_515_008 * 4
    # 106_168_320 linear + 28_311_552 tied embedding split 3 ways; 61 norms of 576 on every rank.
    assert weight_bytes(cfg, "fp32", 3) == (106_168_320 + 28_311_552) * 4 // 3 + 61 * 576 * 4
    assert kv_bytes_per_token(cfg, "fp32", 3) == 2 * 30 * 1 * 64 * 4


def test_cpu_devices_reserve_kv_only_for_what_the_batch_limits_fill():
    cfg = ModelConfig.from_dict(SMOLLM2)
    roomy = plan(cfg, "cpu:1", dtype="fp32", device_memory=64 * GiB, max_model_len=2000, max_num_seqs=8)
    (shape,) = roomy.shapes
    assert shape.kv_tokens == 8 * 2000 // 16 * 16  # 125 blocks of 16 per sequence
    assert shape.kv_per_device == shape.kv_tokens * kv_bytes_per_token(cfg, "fp32", 1)
    tight = plan(cfg, "cpu:1", dtype="fp32", device_memory=1 * GiB, max_model_len=2000, max_num_seqs=8)
    assert tight.shapes[0].kv_tokens < shape.kv_tokens  # the memory binds before the batch limits


def test_explicit_tp_that_does_not_divide_the_heads():
    p = plan(ModelConfig.from_dict(SMOLLM2), "cpu:4", tp=2, device_memory=2 * GiB)
    assert p.chosen is None and not p.ok
    assert "tp=2 is impossible" in p.reasons[0] and p.reasons[0].endswith("valid TP degrees: 1, 3")


def test_explicit_shapes():
    assert plan("Llama-3.1-70B", "8xH100-80GB", max_model_len=8192, tp=2).chosen == (2, 4)
    both = plan("Llama-3.1-70B", "8xH100-80GB", max_model_len=8192, tp=2, dp=2)
    assert both.chosen == (2, 2) and "4 devices left idle" in both.reasons[0]
    assert "dp=9 needs at least 9 devices" in plan("Llama-3.1-8B", "8xH100-80GB", dp=9).reasons[0]
    too_many = plan("Llama-3.1-70B", "8xH100-80GB", tp=4, dp=4)
    assert too_many.chosen is None and "needs 16 devices; 8 available" in too_many.reasons[0]
    tight = plan("Llama-3.1-70B", "8xH100-80GB", tp=1)
    assert tight.chosen == (1, 8) and not tight.ok and "does not fit" in tight.reasons[1]
    auto_tp = plan("Llama-3.1-70B", "8xH100-80GB", max_model_len=8192, dp=4)
    assert auto_tp.chosen == (2, 4)  # tp=4 would hold 16 sequences, but dp=4 leaves 2 devices a replica


def test_nothing_fits():
    p = plan("Llama-3.1-70B", "1xA100-40GB", dtype="fp32")
    assert p.chosen is None and "nothing fits on 1x A100-40GB" in p.reasons[-1]
    assert "Chosen: none" in format_table(p)


def test_short_of_concurrency_picks_smallest_fitting_tp():
    p = plan("Llama-3.1-8B", "2xA100-40GB", max_model_len=131072, concurrency=8)
    assert [s.sequences for s in p.shapes if s.dp == 1] == [1, 3]  # tp=1, tp=2: neither holds 8
    assert p.chosen == (1, 2)  # the most replicas; the operator is told what to change
    assert any("no TP up to 2 holds 8 sequences" in r and "lower --max-model-len" in r for r in p.reasons)


def test_table_marks_the_choice_and_aligns():
    text = format_table(plan("Llama-3.1-70B", "8xH100-80GB", max_model_len=8192))
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("tp"))
    rows = lines[header:header + 16]
    fits = rows[0].index("fits")
    assert all(r[fits:fits + 4].strip() in {"fits", "yes", "no"} for r in rows)
    assert [r.split()[:3] for r in rows if r.startswith("*")] == [["*", "4", "2"]]
    assert "Chosen: tp=4, dp=2 (marked *)" in text


@pytest.mark.parametrize("n, text", [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"),
                                     (163_840, "160.0 KiB"), (141_107_412_992, "131.4 GiB"),
                                     (5 << 40, "5.0 TiB")])
def test_fmt_bytes(n, text):
    assert fmt_bytes(n) == text


def test_to_dict_is_json():
    data = json.loads(json.dumps(plan("Mixtral-8x7B", "4xH100-PCIe").to_dict()))
    assert data["chosen"] == [4, 1] and data["impossible"] == {"3": data["impossible"]["3"]}
    assert not any("does not serve it yet" in n for n in data["notes"])  # Mixtral is served
    assert data["shapes"][0]["weights_per_device"] > 0


@pytest.mark.parametrize("spec, count, name", [
    ("8xH100-80GB", 8, "H100-80GB"), ("4xA100-40GB", 4, "A100-40GB"), ("2 x a100-80gb", 2, "A100-80GB"),
    ("H100-PCIe", 1, "H100-PCIe"), ("8xH200-141GB", 8, "H200-141GB"), ("8xB200-180GB", 8, "B200-180GB"),
    ("4xL40S-48GB", 4, "L40S-48GB"), ("4xA10G-24GB", 4, "A10G-24GB"), ("2xL4-24GB", 2, "L4-24GB"),
    ("2xRTX-4090-24GB", 2, "RTX-4090-24GB"), ("RTX-6000-Ada-48GB", 1, "RTX-6000-Ada-48GB"),
    ("8xMI300X-192GB", 8, "MI300X-192GB"),
])
def test_describe_gpus(spec, count, name):
    pool = describe(spec)
    assert (pool.count, pool.hardware.name, pool.kind) == (count, name, "cuda")
    assert pool.memory == HARDWARE[name].memory


@pytest.mark.parametrize("nvml, name", [("NVIDIA H200", "H200-141GB"), ("NVIDIA L40S", "L40S-48GB"),
                                        ("NVIDIA L4", "L4-24GB"), ("NVIDIA GeForce RTX 4090", "RTX-4090-24GB"),
                                        ("NVIDIA A10G", "A10G-24GB"), ("NVIDIA B200", "B200-180GB")])
def test_gpus_found_by_their_driver_names(nvml, name):
    assert hardware.hardware_for_gpu(nvml) is HARDWARE[name]


def test_a_faster_device_plans_faster_and_a_larger_one_fits_more():
    small, large = (plan("Llama-3.1-8B", f"1x{name}", dtype="bf16", max_model_len=4096)
                    for name in ("L4-24GB", "H200-141GB"))
    assert small.chosen == large.chosen == (1, 1)
    speed = {p.devices: p.shapes[0].tokens_per_s for p in (small, large)}
    assert speed["1x H200-141GB"] > 5 * speed["1x L4-24GB"]  # 4.8 TB/s against 300 GB/s of memory bandwidth
    assert large.shapes[0].kv_tokens > 10 * small.shapes[0].kv_tokens


def test_a_device_named_by_its_memory_alone():
    pool = describe("4x48GB")
    assert (pool.count, pool.memory, pool.hardware, pool.label) == (4, 48 * 10**9, None, "4x 48GB")
    assert "no throughput estimate" in pool.notes[0]
    p = plan("Llama-3.1-8B", "2x24GiB", dtype="bf16", max_model_len=4096)
    assert p.chosen is not None and all(s.tokens_per_s is None for s in p.shapes)


def test_a_device_by_its_memory_with_a_link_plans_the_all_reduce_cost():
    pcie = plan("Llama-3.1-70B", "4x48GB", link="pcie", max_model_len=8192)
    shape = pcie.chosen_shape
    assert (shape.tp, shape.batch, shape.tokens_per_s) == (4, 8, None)  # memory and a link: no compute figures
    # 2 all-reduces x 80 layers, each 25 us plus a ring's 2(tp-1)/tp of 8 x 8192 bf16 at 32 GB/s.
    assert shape.allreduce_s_per_step == pytest.approx(160 * (25e-6 + 1.5 * 8 * 8192 * 2 / 32e9))
    assert pcie.devices == "4x 48GB over PCIe Gen4 x16" and "--link pcie: PCIe Gen4 x16, 32 GB/s" in pcie.notes[0]
    assert "5.0 ms" in format_table(pcie) and "all-reduce time/step" in format_table(pcie)
    nvlink = plan("Llama-3.1-70B", "4x48GB", link="nvlink", max_model_len=8192).chosen_shape
    assert nvlink.allreduce_s_per_step < shape.allreduce_s_per_step / 2
    alone = plan("Llama-3.1-70B", "4x48GB", max_model_len=8192)
    assert all(s.allreduce_s_per_step is None for s in alone.shapes)  # memory only, as before
    assert "--link pcie or --link nvlink adds the all-reduce cost" in alone.notes[0]
    h100 = plan("Llama-3.1-70B", "8xH100-80GB", max_model_len=8192).chosen_shape  # a known device: its own link
    step = decode_step(L70, HARDWARE["H100-80GB"], "bf16", h100.tp, h100.batch, 4096)
    assert h100.allreduce_s_per_step == pytest.approx(step.comm)


@pytest.mark.parametrize("spec, what", [("8xH100-80GB", "its interconnect is NVLink 4"), ("cpu:2", "gloo"),
                                        (None, "the devices found")])
def test_a_link_only_for_devices_by_their_memory(spec, what):
    with pytest.raises(DeviceSpecError, match=f"--link is for devices named by their memory alone.*{what}"):
        plan("Llama-3.1-8B", spec, link="pcie")
    with pytest.raises(DeviceSpecError, match="--link 'ib' unknown; use pcie or nvlink"):
        plan("Llama-3.1-8B", "2x24GB", link="ib")


@pytest.mark.parametrize("spec", ["auto", "0,1", "9xB200", "cpu:0", "0xH100-80GB", "4x48", "0x48GB"])
def test_describe_rejects_what_is_no_description(spec):
    assert describe(spec) is None


def test_describe_cpu_and_probe():
    pool = describe("cpu:4", device_memory=3 * GiB)
    assert (pool.count, pool.memory, pool.kind) == (4, 3 * GiB, "cpu")
    figures = hardware.cpu_figures()
    assert hardware.cpu_figures() is figures  # measured once per process
    assert figures.flops32 > 1e9 and figures.flops16 > 1e8 and figures.copy_bandwidth > 1e8
    assert pool.hardware.flops32 <= figures.flops32


def test_cpu_figures_are_measured_once_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("MGPUD_CACHE_DIR", str(tmp_path))
    measured = hardware._measure()
    (kept,) = (tmp_path / "hardware").iterdir()
    assert hardware._remembered() == measured  # the next process reads it instead of measuring
    kept.write_text("{not json")
    assert hardware._remembered() is None  # a damaged file means: measure again


def test_model_from_directory_and_bare_config(tmp_path):
    (tmp_path / "smol").mkdir()
    (tmp_path / "smol" / "config.json").write_text(json.dumps(SMOLLM2))
    pool = DeviceSet("1x A100-40GB", "cuda", 1, HARDWARE["A100-40GB"].memory, HARDWARE["A100-40GB"])
    from_dir = plan(tmp_path / "smol", pool)
    from_file = plan(str(tmp_path / "smol" / "config.json"), pool)
    assert from_dir.model == from_file.model == "smol" and from_dir.params == 134_515_008
    with pytest.raises(PlanError, match="presets: Llama-3.1-8B"):
        plan(tmp_path / "nothing-here", pool)


@pytest.mark.parametrize("kwargs, message", [
    ({"dtype": "int4"}, "dtype 'int4' unknown"), ({"concurrency": 0}, "concurrency"),
    ({"memory_utilization": 1.5}, "memory utilization"), ({"tp": -1}, "tp and dp"),
    ({"block_size": 24}, "power of two"),
])
def test_bad_knobs(kwargs, message):
    with pytest.raises(PlanError, match=message):
        plan("Llama-3.1-8B", "1xH100-80GB", **kwargs)


def test_bad_device_spec():
    with pytest.raises(DeviceSpecError, match="known: H100-80GB"):
        plan("Llama-3.1-8B", "8xH100")


def test_discovered_gpus(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpus = [FakeGpu(uuid="GPU-1"), FakeGpu(uuid="GPU-2", used=60 * GiB),
            FakeGpu(uuid="GPU-3", fail={"nvmlDeviceGetHandleByIndex": 15})]  # 15: GPU is lost
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(gpus))
    p = plan("Llama-3.1-8B", "auto", max_model_len=8192, concurrency=1)
    assert (p.devices, p.device_count) == ("2x NVIDIA H100 80GB HBM3", 2)
    assert p.budget == int(81559 * MiB * 0.9) - 60 * GiB - 1 * GiB  # GPU-2's other processes count
    assert any("cuda:2 left out" in n and "GPU is lost" in n for n in p.notes)
    assert p.chosen_shape.tokens_per_s > 0
    gpus[:] = [FakeGpu(name="NVIDIA RTX A5000", total=24564 * MiB)]  # a GPU the table lacks
    unknown = plan("Mistral-7B", "0", max_model_len=4096, concurrency=1)
    assert unknown.chosen == (1, 1) and unknown.chosen_shape.tokens_per_s is None
    assert unknown.knee_tp is None and any("no figures for NVIDIA RTX A5000" in n for n in unknown.notes)


def test_no_usable_device(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([], init_error=9))  # 9: driver not loaded
    with pytest.raises(DeviceSpecError, match="no usable device: cuda:0 left out: NVML init unavailable"):
        device_set("0")


@pytest.mark.parametrize("name, tp", [("SmolLM2-135M", 1), ("SmolLM2-135M", 3), ("Qwen2.5-72B", 2)])
def test_weights_per_device_match_the_engines_own_model(name, tp):
    torch = pytest.importorskip("torch")
    from mgpud.engine.core.models.llama import LlamaForCausalLM
    from mgpud.engine.core.parallel import TPGroup

    cfg = model_preset(name)
    with torch.device("meta"):  # shapes only, no memory
        model = LlamaForCausalLM(cfg, TPGroup(rank=0, size=tp), torch.float32, max_positions=16)
    held = sum(p.numel() * p.element_size() for p in model.parameters())  # tied weights count once
    assert held == weight_bytes(cfg, "fp32", tp)
