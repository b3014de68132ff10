"""Decode CUDA graphs: what runs without a device — buckets, padding, the static inputs, the
eager switch. The captured graphs themselves are tested in test_gpu.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from mgpud.cli.main import cli
from mgpud.daemon.manager import engine_config
from mgpud.engine.config import EngineConfig, ModelConfig
from mgpud.engine.core.batch import StepInput, build_step
from mgpud.engine.core.cuda_graphs import BUCKET_CAP, DecodeGraphs, DecodeInputs, batch_buckets, bucket_for
from mgpud.engine.core.model_runner import ModelRunner
from mgpud.engine.core.parallel import TPGroup
from mgpud.engine.core.sampling import SamplingParams
from mgpud.engine.core.sequence import Sequence
from mgpud.engine.hosts.inventory import memory_breakdown
from mgpud.engine.serving.group import ModelGroup
from mgpud.ipc.errors import BadRequest
from mgpud.ipc.schema import check_args

BLOCK = 4
CPU = torch.device("cpu")


@pytest.mark.parametrize("max_num_seqs, expected", [
    (1, [1]), (3, [1, 2, 3]), (8, [1, 2, 4, 8]), (20, [1, 2, 4, 8, 16, 20]),
    (64, [1, 2, 4, 8, 16, 32, 48, 64]),
])
def test_buckets_grow_by_16_after_8_and_end_at_max_num_seqs(max_num_seqs: int, expected: list[int]) -> None:
    assert batch_buckets(max_num_seqs) == expected


def test_buckets_are_capped() -> None:
    buckets = batch_buckets(4096)
    assert buckets[-1] == BUCKET_CAP and len(buckets) == 4 + BUCKET_CAP // 16
    assert bucket_for(BUCKET_CAP + 1, buckets) is None


def test_a_batch_pads_to_the_next_bucket() -> None:
    buckets = batch_buckets(256)
    assert [bucket_for(n, buckets) for n in (1, 3, 5, 9, 17, 33, 256)] == [1, 4, 8, 16, 32, 48, 256]


def _decodes(lengths: list[int], first_block: int = 1) -> StepInput:
    """A decode step of one sequence per length, each on its own blocks from `first_block` on."""
    batch, block = [], first_block
    for i, n in enumerate(lengths):
        seq = Sequence(f"r{i}", list(range(3, 3 + n)), n - 1, SamplingParams(), frozenset())
        blocks = -(-n // BLOCK)
        seq.block_table = list(range(block, block + blocks))
        seq.num_computed_tokens = n - 1
        block += blocks
        batch.append((seq, 1))
    return build_step(batch, BLOCK)


def test_padding_rows_write_nowhere_and_read_nothing() -> None:
    inputs = DecodeInputs(max_batch=8, table_width=6, device=CPU)
    step = _decodes([5, 9, 2])
    inputs.load(step, bucket=4)
    assert inputs.ids[:3].tolist() == step.input_ids.tolist()
    assert inputs.slots[:3].tolist() == step.slot_mapping.tolist()
    assert inputs.context_lens[:3].tolist() == [5, 9, 2]
    assert inputs.tables[0].tolist() == [1, 2, 0, 0, 0, 0] and inputs.tables[1].tolist() == [3, 4, 5, 0, 0, 0]
    # The padding row: no cache slot written, no token attended to, no block named.
    assert (inputs.slots[3].item(), inputs.context_lens[3].item()) == (-1, 0)
    assert inputs.tables[3].tolist() == [0] * 6
    meta = inputs.metadata(4)
    assert meta.num_decodes == 4 and meta.prefills == [] and meta.decode_block_tables.shape == (4, 6)


def test_a_smaller_step_leaves_nothing_of_the_larger_one() -> None:
    inputs = DecodeInputs(max_batch=8, table_width=6, device=CPU)
    buffers = [t.data_ptr() for t in (inputs.ids, inputs.positions, inputs.slots, inputs.tables, inputs.context_lens)]
    inputs.load(_decodes([20, 20, 20, 20, 20]), bucket=8)
    inputs.load(_decodes([3], first_block=7), bucket=2)
    assert inputs.tables[0].tolist() == [7, 0, 0, 0, 0, 0]
    assert (inputs.slots[1].item(), inputs.context_lens[1].item(), inputs.tables[1].sum().item()) == (-1, 0, 0)
    # Updated in place: the graphs keep reading the same memory.
    assert buffers == [t.data_ptr() for t in (inputs.ids, inputs.positions, inputs.slots, inputs.tables,
                                              inputs.context_lens)]


def test_steps_that_do_not_fit_are_refused() -> None:
    inputs = DecodeInputs(max_batch=4, table_width=2, device=CPU)
    with pytest.raises(ValueError, match="captured width"):
        inputs.load(_decodes([12]), bucket=1)  # 3 blocks > 2
    with pytest.raises(ValueError, match="does not fit bucket"):
        inputs.load(_decodes([2, 2, 2]), bucket=2)


def test_only_pure_decode_steps_within_the_buckets_replay() -> None:
    graphs = DecodeGraphs(lambda *a: torch.zeros(0), DecodeInputs(4, 4, CPU), batch_buckets(4))
    assert graphs.fits(_decodes([3, 4, 5, 6]))
    assert not graphs.fits(_decodes([3, 4, 5, 6, 7]))
    assert not graphs.fits(_decodes([4 * BLOCK + 1]))  # a table wider than the captured one
    prompt = Sequence("p", [1, 2, 3], 3, SamplingParams(), frozenset())
    prompt.block_table = [9]
    seq = Sequence("d", [4, 5], 1, SamplingParams(), frozenset())
    seq.block_table, seq.num_computed_tokens = [8], 1
    assert not graphs.fits(build_step([(seq, 1), (prompt, 3)], BLOCK))


def test_padded_static_inputs_give_the_eager_logits_and_touch_no_other_block(tiny_llama: Path) -> None:
    """The graph path's inputs, run eagerly on CPU: the padding changes neither the real rows'
    logits nor any KV slot but the step's own."""
    cfg = ModelConfig.from_dir(tiny_llama)
    runner = ModelRunner(cfg, tiny_llama, TPGroup(0, 1), CPU, "float32", 64, BLOCK)
    runner.allocate_kv(16)
    prefill = _prefill_step([[5, 6, 7, 8, 9], [10, 11, 12]], [[1, 2], [3]])
    runner.execute(prefill)
    step = _decodes_after([[5, 6, 7, 8, 9, 42], [10, 11, 12, 43]], [[1, 2], [3]])
    before = runner.kv.clone()
    eager = runner.execute(step)
    kv_eager = runner.kv.clone()
    runner.kv.copy_(before)
    inputs = DecodeInputs(max_batch=8, table_width=16, device=CPU)
    inputs.load(step, bucket=8)
    with torch.inference_mode():
        hidden = inputs.run(runner._forward, 8)
        padded = runner.model.logits(hidden[:2]).float()
    torch.testing.assert_close(padded, eager)
    torch.testing.assert_close(runner.kv, kv_eager)  # the batch size may change a matmul's rounding
    changed = (runner.kv != before).any(dim=5).any(dim=4).any(dim=1).any(dim=0).nonzero()
    assert changed.tolist() == [[2, 1], [3, 3]]  # (block, slot) of the two new tokens


def _prefill_step(prompts: list[list[int]], tables: list[list[int]]) -> StepInput:
    batch = []
    for i, (ids, table) in enumerate(zip(prompts, tables)):
        seq = Sequence(f"p{i}", ids, len(ids), SamplingParams(), frozenset())
        seq.block_table = table
        batch.append((seq, len(ids)))
    return build_step(batch, BLOCK)


def _decodes_after(tokens: list[list[int]], tables: list[list[int]]) -> StepInput:
    batch = []
    for i, (ids, table) in enumerate(zip(tokens, tables)):
        seq = Sequence(f"d{i}", ids, len(ids) - 1, SamplingParams(), frozenset())
        seq.block_table, seq.num_computed_tokens = table, len(ids) - 1
        batch.append((seq, 1))
    return build_step(batch, BLOCK)


def test_enforce_eager_is_a_load_flag_that_reaches_the_engine_config() -> None:
    help_text = CliRunner().invoke(cli, ["load", "--help"]).stdout
    assert "--enforce-eager" in help_text
    spec = check_args("load", {"model": "demo", "tp": 1, "enforce_eager": True})
    assert EngineConfig(**engine_config("demo", spec, {}, {})).enforce_eager is True
    plain = check_args("load", {"model": "demo", "tp": 1})
    assert EngineConfig(**engine_config("demo", plain, {}, {})).enforce_eager is False
    with pytest.raises(BadRequest, match="enforce_eager"):
        check_args("load", {"model": "demo", "enforce_eager": "yes"})


def test_cpu_devices_hold_no_graphs(tiny_llama: Path) -> None:
    cfg = EngineConfig(model=str(tiny_llama), dtype="float32", max_model_len=64, kv_cache_memory=4 << 20)
    with ModelGroup(cfg) as group:
        ids, _, _ = group.stream([5, 6, 7], params=SamplingParams(max_tokens=3, ignore_eos=True)).result()
        assert len(ids) == 3 and group.stats().replicas[0].graph_bytes_per_rank == [0]


def test_graph_memory_is_its_own_part_of_the_device_split() -> None:
    gib = 1 << 30
    split = memory_breakdown(capacity=80 * gib, used=60 * gib, weights=16 * gib, kv_allocated=40 * gib,
                             kv_used=10 * gib, activations=2 * gib, graphs=gib)
    assert (split.graphs, split.other, split.free) == (gib, gib, 20 * gib)
