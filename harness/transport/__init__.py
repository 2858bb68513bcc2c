"""Transports: how the harness talks to a device. One small interface: put, run, get, close."""

from .base import CommandResult, Transport

__all__ = ["CommandResult", "Transport"]
