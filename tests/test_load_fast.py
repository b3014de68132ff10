"""Loads cost what they use: a CPU worker's KV cache is resident only as its blocks fill,
and without an explicit budget it reserves what the batch limits can fill; weights are
read straight from the files; a shape once profiled is not profiled again; every phase
is timed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import psutil
from mgpud.engine import EngineConfig, ModelGroup, RequestStream, SamplingParams
from mgpud.engine.core.llm_engine import LLMEngine
from mgpud.engine.core.prepared import PreparedModel
from mgpud.engine.serving.pool import DevicePool

from mgpud.records import LoadProgress

GiB = 1 << 30


def _generate(engine: LLMEngine, tokens: int) -> None:
    stream = RequestStream()
    engine.add_request("r", [5, 6, 7], SamplingParams(max_tokens=tokens, ignore_eos=True), stream.put)
    stream.result()


def test_kv_reservation_is_not_resident_until_used(tiny_llama: Path) -> None:
    config = EngineConfig(model=str(tiny_llama), kv_cache_memory=2 * GiB)
    with LLMEngine(PreparedModel.open(tiny_llama, 256), config, ["cpu:0"]) as engine:
        assert engine.info.kv_bytes_per_rank > 1.9 * GiB
        worker = psutil.Process(engine.info.pids[0])
        loaded = worker.memory_info().rss
        assert loaded < GiB // 2, f"a worker holding a 2 GiB KV reservation is {loaded >> 20} MiB resident"
        _generate(engine, 40)
        stats = engine.stats()
        # 43 tokens in 16-token blocks: three blocks handed out, the rest never touched.
        assert stats.kv_blocks_touched == 3
        assert worker.memory_info().rss - loaded < 64 << 20


def test_cpu_default_kv_fits_the_batch_limits(tiny_llama: Path) -> None:
    config = EngineConfig(model=str(tiny_llama), max_num_seqs=3, device_memory=8 * GiB)
    frames: list[LoadProgress] = []
    with LLMEngine(PreparedModel.open(tiny_llama, 100), config, ["cpu:0"], frames.append) as engine:
        # 3 sequences of 100 tokens in 16-token blocks, not 90% of 8 GiB
        assert engine.info.num_kv_blocks == 3 * 7
    assert [f.phase for f in frames if f.phase != "load"] == ["start", "profile", "kv", "ready"]
    assert list(frames[-1].seconds) == ["start", "load", "profile", "kv"]


def test_checkpoint_tensor_reads_what_safetensors_holds(tmp_path: Path) -> None:
    import os

    import torch
    from mgpud.engine.core.loader import CheckpointTensor, _headers
    from safetensors.torch import save_file

    w = torch.randn(40, 24, dtype=torch.bfloat16)
    file = tmp_path / "w.safetensors"
    save_file({"a": torch.arange(3, dtype=torch.int32), "w": w}, str(file))
    meta, data_start = _headers(file)
    fd = os.open(file, os.O_RDONLY)
    try:
        src = CheckpointTensor(fd, file, "w", meta["w"], data_start)
        assert torch.equal(src[8:16], w[8:16]) and torch.equal(src[:, 6:12], w[:, 6:12])
        assert torch.equal(src[3], w[3]) and torch.equal(src[-1, 2:4], w[-1, 2:4]) and torch.equal(src[::3], w[::3])
        into = torch.empty(2, 10, 24, dtype=torch.bfloat16)
        src.read_rows_into(into[1, 2:7], 30, 35)  # a contiguous row range: read in place
        assert torch.equal(into[1, 2:7], w[30:35])
        wider = torch.empty(5, 24, dtype=torch.float32)  # another dtype: read, then converted
        src.read_rows_into(wider, 0, 5)
        assert torch.equal(wider, w[:5].float())
        assert src.get_shape() == [40, 24]
    finally:
        os.close(fd)


def test_load_phases_are_reported_with_their_shares() -> None:
    from mgpud.cli.progress import ProgressView

    ready = LoadProgress("ready", message="ready", seconds={"start": 0.1, "load": 0.3, "kv": 0.0})
    assert ready.shares() == "start 0.1 s (25%) · load 0.3 s (75%) · kv 0.0 s (0%)"
    assert ProgressView("loading smol")._line(ready) == f"loading smol: ready in 0.4 s: {ready.shares()}"
    assert LoadProgress("start").shares() == ""


def test_a_replica_of_a_loaded_shape_is_not_profiled_again(tiny_llama: Path) -> None:
    config = EngineConfig(model=str(tiny_llama), max_model_len=64, max_num_seqs=2, device_memory=GiB)
    frames: list[LoadProgress] = []
    with ModelGroup(config, dp=1, pool=DevicePool(["cpu:0", "cpu:1"])) as group:
        group.reconfigure(1, 2, progress=frames.append)
        first, second = group.stats().replicas
    assert "profile" not in [f.phase for f in frames] and frames[-1].phase == "ready"
    assert second.peak_activation_bytes_per_rank == first.peak_activation_bytes_per_rank


def test_weights_load_alike_on_several_threads(tiny_models: dict[str, Path]) -> None:
    """Tensors are read concurrently where a rank has cores to spare: the same parameters
    as one at a time, and progress counts up to every byte of the checkpoint's files."""
    import torch
    from mgpud.engine import ModelConfig
    from mgpud.engine.core.layers.quant import linear_method
    from mgpud.engine.core.loader import load_weights
    from mgpud.engine.core.models import model_class
    from mgpud.engine.core.parallel import TPGroup

    path = tiny_models["llama-tied-sharded"]
    cfg = ModelConfig.from_dir(path)

    def loaded(threads: int) -> tuple[dict[str, torch.Tensor], list[LoadProgress]]:
        model = model_class(cfg)(cfg, TPGroup(0, 1), torch.float32, 128, False, linear_method(None, False))
        seen: list[LoadProgress] = []
        load_weights(model, path, lambda p: seen.append(replace(p)), threads=threads)
        return model.state_dict(), seen

    (one, _), (three, seen) = loaded(1), loaded(3)
    assert one.keys() == three.keys() and all(torch.equal(one[k], three[k]) for k in one)
    assert [p.tensors_done for p in seen] == sorted(p.tensors_done for p in seen)
    assert (seen[-1].bytes_done, seen[-1].tensors_done) == (seen[-1].bytes_total, seen[-1].tensors_total)
