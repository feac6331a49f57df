"""The one device parser: auto picks CUDA, then MPS, then the CPU; precision tricks per device."""

from __future__ import annotations

import pytest
import torch

from vicreg_lib import hardware
from vicreg_lib.hardware import precision_for, resolve_device


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(hardware, "mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(hardware, "mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_an_unavailable_device_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(hardware, "mps_available", lambda: False)
    with pytest.raises(ValueError, match="'mps' was requested but this PyTorch has no MPS backend"):
        resolve_device("mps")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")


def test_bf16_and_channels_last_are_on_for_cuda_only_by_default():
    assert precision_for(torch.device("cuda")) == (True, True)
    assert precision_for(torch.device("mps")) == (False, False)
    assert precision_for(torch.device("cpu")) == (False, False)
    assert precision_for(torch.device("mps"), amp="bf16", channels_last="on") == (True, True)
