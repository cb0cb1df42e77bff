"""The shared deterministic-torch context (steps/torchtools.py)."""

import os

import pytest
import torch

from steps.torchtools import deterministic_torch


@pytest.mark.parametrize("before", [False, True])
def test_deterministic_inside_and_previous_setting_restored(before):
    was = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(before)
        with deterministic_torch():
            assert torch.are_deterministic_algorithms_enabled()
        assert torch.are_deterministic_algorithms_enabled() is before
        with pytest.raises(RuntimeError, match="boom"):
            with deterministic_torch(seed=1):
                raise RuntimeError("boom")
        assert torch.are_deterministic_algorithms_enabled() is before
    finally:
        torch.use_deterministic_algorithms(was)


def test_cublas_workspace_config_is_set_unless_given(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with deterministic_torch():
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with deterministic_torch():
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_seed_seeds_inside_and_restores_the_global_generator():
    state = torch.random.get_rng_state()
    with deterministic_torch(seed=5):
        a = torch.rand(3)
    assert torch.equal(torch.random.get_rng_state(), state)
    with deterministic_torch(seed=5):
        b = torch.rand(3)
    assert torch.equal(a, b)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        assert torch.equal(torch.rand(3), a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matmul_allowed_in_deterministic_mode():
    with deterministic_torch():
        x = torch.ones(64, 64, device="cuda")
        assert float((x @ x).sum()) == 64.0**3
