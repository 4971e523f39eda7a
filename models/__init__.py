"""The torch networks: VQ-VAE, ConvLSTM dynamics, actor-critic policy, and the inference path."""

from dlswm.models.agent import InferenceAgent
from dlswm.models.system import System

__all__ = ["InferenceAgent", "System"]
