"""Data-parallel training under torchrun: shares of batches, one writer, and the same model as one process."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from projects import copy_project, project_config, torchrun_train, trained_project
from safetensors.numpy import load_file
from stores import interrupt_in_second_epoch, make_frames_workdir
from torch.utils.data import BatchSampler

from audiotokens.cli import main
from audiotokens.model.objectives import objective_for
from audiotokens.pipeline.distributed import Ranks, RankShare, deal_batches, padding_item, real_clip
from audiotokens.pipeline.layout import Layout
from audiotokens.pipeline.run import execute
from audiotokens.pipeline.stores import open_split
from audiotokens.training.datasets import EpochShuffleSampler, FrameClipDataset
from audiotokens.training.loaders import CroppedBatches
from audiotokens.training.optimisation import Trainer

# no dropout: the two runs then differ only by the order in which gradients are summed
# fp32 (train.amp off): the torchrun processes would otherwise run bf16 on a CPU that has it natively
DDP_SETTINGS = ("model.dropout=0", "train.batch_size=5", "train.grad_accum=2", "train.crop_frames=20",
                "train.epochs=2", "train.amp=false")


def shares(inner, world: int, epoch: int = 0) -> list[list[list]]:
    """Each rank's batches of one epoch."""
    out = []
    for rank in range(world):
        share = RankShare(inner, Ranks(rank=rank, world=world))
        share.set_epoch(epoch)
        out.append(list(share))
    return out


@pytest.mark.parametrize("world", [2, 3])
def test_each_global_batch_is_shared_out_once(world):
    inner = BatchSampler(EpochShuffleSampler(11, seed=4), 4, drop_last=False)
    inner.sampler.set_epoch(1)
    global_batches = list(inner)
    per_rank = shares(inner, world, epoch=1)
    assert all(len(batches) == len(global_batches) for batches in per_rank)
    for position, batch in enumerate(global_batches):
        items = [real_clip(item) for batches in per_rank for item in batches[position]]
        assert sorted(clip for clip, padding in items if not padding) == sorted(batch)
    # shares differ by at most one clip, and no rank pads while the batch has a clip for each
    for position in range(len(global_batches)):
        sizes = [len(batches[position]) for batches in per_rank]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
        assert not any(real_clip(item)[1] for batches in per_rank for item in batches[position])


def test_a_rank_with_nothing_to_read_gets_a_padding_item_of_the_batch():
    inner = BatchSampler(EpochShuffleSampler(5, seed=0), 4, drop_last=False)  # batches of 4 and 1
    rank_one = shares(inner, 2)[1]
    clip, padding = real_clip(rank_one[-1][0])
    assert padding and clip == list(inner)[-1][0]


def test_crops_are_shared_with_their_windows(tmp_path):
    lengths = np.array([30, 8, 50, 25, 40])
    inner = CroppedBatches(inner=BatchSampler(EpochShuffleSampler(5, seed=1), 5, drop_last=False),
                           lengths=lengths, crop=10, seed=1)
    whole = next(iter(inner))
    parts = [item for batches in shares(inner, 2) for item in batches[0]]
    assert sorted(parts) == sorted(whole)


def test_a_padding_item_reads_its_clip_as_index_minus_one(tmp_path):
    layout = make_frames_workdir(tmp_path, n_train=6, n_validation=2)
    _, index = open_split(layout, "frames", "train")
    dataset = FrameClipDataset(store_path=layout.frames, index=index, max_frames=100,
                               objective=objective_for(index.task))
    rows, _, clip = dataset[3]
    padded_rows, _, padded_clip = dataset[padding_item(3)]
    assert clip == 3 and padded_clip == -1
    np.testing.assert_array_equal(rows, padded_rows)
    window = dataset[padding_item((3, 2, 5))]
    np.testing.assert_array_equal(window[0], rows[2:5])


def test_evaluation_batches_are_dealt_whole():
    batches = [[0, 1], [2, 3], [4], [5, 6], [7]]
    dealt = [deal_batches(batches, Ranks(rank=r, world=2)) for r in range(2)]
    assert dealt == [[[0, 1], [4], [7]], [[2, 3], [5, 6]]]


@pytest.mark.parametrize("command", ["cluster", "tokenize", "evaluate", "run"])
def test_only_train_runs_under_torchrun(tmp_path, command):
    result = CliRunner().invoke(main, [command, "--workdir", str(tmp_path)],
                                env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"})
    assert result.exit_code == 2
    assert "runs in one process; only `train` runs under torchrun" in result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------- two gloo processes vs one


def one_process_train(project: Path, *settings: str, resume: bool = False) -> None:
    execute("train", project_config(project, *settings), resume=resume)


def epochs(project: Path) -> list[dict]:
    return [json.loads(line) for line in Layout(project / "work").metrics.read_text().splitlines()]


def files(project: Path) -> list[str]:
    """The workdir's files; TensorBoard's by their place only (their names hold the time, host and pid), so
    that a second process writing event files shows as one more."""
    work = project / "work"
    names = (str(p.relative_to(work)) for p in work.rglob("*") if p.is_file() and p.name != ".audiotokens.lock")
    return sorted(re.sub(r"^output/tensorboard/train-[^/]+/events\.out\.tfevents\..*$", "output/tensorboard/RUN/EVENTS",
                         name) for name in names)


def weights(project: Path) -> dict[str, np.ndarray]:
    return load_file(Layout(project / "work").model_dir / "model.safetensors")


def assert_close_runs(one: Path, two: Path) -> None:
    rows_one, rows_two = epochs(one), epochs(two)
    assert len(rows_one) == len(rows_two)
    for a, b in zip(rows_one, rows_two):
        for side in ("train", "validation", "test"):
            if side in a:
                for name, value in a[side].items():
                    assert b[side][name] == pytest.approx(value, abs=1e-5), (a.get("epoch"), side, name)
    w1, w2 = weights(one), weights(two)
    for name in w1:
        np.testing.assert_allclose(w2[name], w1[name], atol=2e-5, err_msg=name)


def test_two_processes_train_like_one_and_only_rank_0_writes(tmp_path_factory, tmp_path):
    """Same global batch (5 clips, 2 accumulated batches per step, crops, evaluation windows): two gloo
    processes follow one process's run, and leave exactly the files one process leaves."""
    source = trained_project(tmp_path_factory, "multilabel")
    one, two = copy_project(source, tmp_path / "one"), copy_project(source, tmp_path / "two")
    one_process_train(one, *DDP_SETTINGS)
    torchrun_train(two, *DDP_SETTINGS)
    assert_close_runs(one, two)
    assert files(two) == files(one)
    record = json.loads((two / "work" / "output" / "model.meta.json").read_text())
    assert record["counts"]["processes"] == 2


def test_resume_under_torchrun_and_gathered_scores_equal_one_process(tmp_path_factory, tmp_path, monkeypatch):
    """A checkpoint of one epoch resumed by two processes continues as one process would; a finished run
    resumed again only re-scores the test split: from the same weights, two processes give one process's
    figures exactly (every window's scores gathered in one process's order)."""
    source = trained_project(tmp_path_factory, "multilabel")
    one = copy_project(source, tmp_path / "one")
    interrupt_in_second_epoch(lambda: one_process_train(one, *DDP_SETTINGS), monkeypatch, Trainer)
    two = copy_project(one, tmp_path / "two")
    one_process_train(one, *DDP_SETTINGS, resume=True)
    torchrun_train(two, *DDP_SETTINGS, resume=True)
    assert_close_runs(one, two)

    again = copy_project(two, tmp_path / "again")
    one_process_train(two, *DDP_SETTINGS, resume=True)
    torchrun_train(again, *DDP_SETTINGS, resume=True)
    assert epochs(again)[-1] == epochs(two)[-1]
    assert epochs(again)[-1]["split"] == "test"
