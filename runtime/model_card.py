"""What an exported agent says about itself: the ONNX metadata a runtime needs and a person asks about.

Stored as one JSON document under the metadata key `dlswm`; `dlswm play` builds the environment from
`env` and maps policy outputs to ALE actions with `action_ids`, so a model file is all it needs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from dlswm.config import EnvConfig
from dlswm.errors import UserError

FORMAT_VERSION = 1
METADATA_KEY = "dlswm"


@dataclass
class ModelCard:
    game: str
    action_ids: list[int]  # ALE action id of each policy output
    action_meanings: list[str]
    env: dict[str, Any]  # EnvConfig fields: the observation spec and the evaluation protocol
    variant: str  # "fp32", "int8", ...
    quantization: dict[str, Any]  # empty for float variants
    params: int
    macs: int
    provenance: dict[str, Any]  # config digest, iteration, real steps, seed, last eval, export time, version
    config: dict[str, Any]  # the run's full resolved config
    format_version: int = FORMAT_VERSION
    inputs: dict[str, Any] = field(default_factory=lambda: {"frames": "uint8 (batch, stack, height, width)"})
    outputs: dict[str, Any] = field(default_factory=lambda: {
        "logits": "float32 (batch, actions)", "value": "float32 (batch,)", "codes": "int64 (batch, 6, 6)"})

    @property
    def env_config(self) -> EnvConfig:
        return EnvConfig(**self.env)

    @property
    def num_actions(self) -> int:
        return len(self.action_ids)

    def to_metadata(self) -> dict[str, str]:
        return {METADATA_KEY: json.dumps(asdict(self), sort_keys=True)}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], source: str) -> ModelCard:
        """From an ONNX custom metadata map; a clear UserError when it is not a dlswm agent."""
        if METADATA_KEY not in metadata:
            raise UserError(f"{source} is an ONNX model but not a dlswm agent (no '{METADATA_KEY}' metadata)")
        try:
            data = json.loads(metadata[METADATA_KEY])
            version = int(data.get("format_version", 0))
        except (ValueError, TypeError, AttributeError):
            raise UserError(f"{source} has unreadable dlswm metadata") from None
        if version > FORMAT_VERSION:
            raise UserError(f"{source} is dlswm model format {version}; this dlswm reads up to "
                            f"{FORMAT_VERSION}: upgrade dlswm")
        try:
            return cls(**data)
        except TypeError as e:
            raise UserError(f"{source} has incomplete dlswm metadata ({e})") from None
