"""The torch networks: VQ-VAE, ConvLSTM dynamics, actor-critic policy, and the inference path."""

from dlswm.models.agent import InferenceAgent
from dlswm.models.modes import in_mode
from dlswm.models.system import System

__all__ = ["InferenceAgent", "System", "in_mode"]
