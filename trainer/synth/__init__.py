"""Synthetic THINGS-like data: procedural images, a simulated brain, the THINGS layout."""

from .dataset import PRESETS, SynthConfig, generate

__all__ = ["PRESETS", "SynthConfig", "generate"]
