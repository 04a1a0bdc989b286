"""How a distributed training run ends, whether it returns or fails: the DDP wrapper is freed first, then
the process group destroyed (DDP's reducer holds the group; see `training.loop.train`)."""

from __future__ import annotations

import weakref

import pytest
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from training_helpers import common_args, train_in_process

from altadapter.adapters.mlp import MLPAdapter
from altadapter.training import setup as train_setup


@pytest.fixture
def ddp_run(monkeypatch):
    """Training in this process as one rank of a gloo group, its adapter DDP-wrapped as under torchrun.

    Yields, for each destroy_process_group call, whether each DDP wrapper made so far was still alive.
    """
    wrappers: list[weakref.ref] = []
    alive_at_destroy: list[list[bool]] = []
    prepare, destroy = train_setup.prepare_optimization, dist.destroy_process_group

    def prepare_in_ddp(optim, accelerator, adapter):
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        prepared, optimizer, lr_scheduler = prepare(optim, accelerator, adapter)
        wrapper = DistributedDataParallel(prepared)
        wrappers.append(weakref.ref(wrapper))
        return wrapper, optimizer, lr_scheduler

    def recording_destroy(group=None):
        alive_at_destroy.append([ref() is not None for ref in wrappers])
        destroy(group)

    monkeypatch.setattr(train_setup, "prepare_optimization", prepare_in_ddp)
    monkeypatch.setattr(dist, "destroy_process_group", recording_destroy)
    yield alive_at_destroy
    if dist.is_initialized():  # only after a failure of the code under test
        destroy()


def run_args(colour_dataset, tiny_model_dir, tmp_path) -> list[str]:
    return common_args(colour_dataset, tiny_model_dir, tmp_path, "run", "--max_train_steps", "2")


def test_a_finished_run_frees_the_ddp_wrapper_then_destroys_the_group(
    ddp_run, colour_dataset, tiny_model_dir, tmp_path
):
    final = train_in_process("mlp", run_args(colour_dataset, tiny_model_dir, tmp_path))
    assert final.is_file()
    assert ddp_run == [[False]]
    assert not dist.is_initialized()


def test_a_failed_run_frees_the_ddp_wrapper_then_destroys_the_group(
    ddp_run, colour_dataset, tiny_model_dir, tmp_path, monkeypatch
):
    # Raised inside DDP's forward: the failed frames hold the wrapper, as `self` and as the adapter passed.
    def fail(self, *args, **kwargs):
        raise RuntimeError("the adapter failed")

    monkeypatch.setattr(MLPAdapter, "forward", fail)
    with pytest.raises(RuntimeError, match="the adapter failed") as failure:
        train_in_process("mlp", run_args(colour_dataset, tiny_model_dir, tmp_path))
    assert ddp_run == [[False]]
    assert not dist.is_initialized()
    assert any(entry.name == "forward" for entry in failure.traceback)  # the traceback keeps its lines
