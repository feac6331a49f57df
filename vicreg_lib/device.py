"""Which device to run on, and which precision tricks it supports: one parser for every entry point."""

from __future__ import annotations

import re

import torch

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def check_device_text(device: object) -> str:
    """Return ``device`` if it is a device spec this package understands, else raise ValueError."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str) or not DEVICE_PATTERN.match(device):
        raise ValueError(f"unknown device {device!r}: use {DEVICE_CHOICES}")
    return device


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda if available else cpu; "cpu", "cuda", "cuda:N" as given, checked to exist."""
    text = check_device_text(device)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(text)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {text!r} was requested but CUDA is not available; use cpu or auto")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {text!r}: only {torch.cuda.device_count()} CUDA device(s) here; "
                             f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return resolved


def precision_for(device: torch.device, amp: str = "auto", channels_last: str = "auto") -> tuple[bool, bool]:
    """(use bf16 autocast, use channels-last) on ``device``: "auto" turns both on for CUDA only."""
    use_amp = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    use_channels_last = channels_last == "on" or (channels_last == "auto" and device.type == "cuda")
    return use_amp, use_channels_last
