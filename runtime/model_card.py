"""What an exported agent says about itself: the ONNX metadata a runtime needs and a person asks about.

Stored as one JSON document under the metadata key `dlswm`; `dlswm play` builds the environment from
`env` and maps policy outputs to ALE actions with `action_ids`, so a model file is all it needs.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from dlswm.config import EnvConfig, split_unknown_keys
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
            raise UserError(f"{source} is a model but not a dlswm agent (no '{METADATA_KEY}' metadata)")
        try:
            data = json.loads(metadata[METADATA_KEY])
            version = int(data.get("format_version", 0))
        except (ValueError, TypeError, AttributeError):
            raise UserError(f"{source} has unreadable dlswm metadata") from None
        if version > FORMAT_VERSION:
            raise UserError(f"{source} is dlswm model format {version}; this dlswm reads up to "
                            f"{FORMAT_VERSION}: upgrade dlswm")
        if version < 1:
            raise UserError(f"{source} has dlswm model format {version}; formats start at 1")
        # Fields a newer dlswm of this format added are ignored, with a word: they cannot be needed here.
        known = {f.name for f in fields(cls)}
        extra = sorted(set(data) - known)
        if isinstance(data.get("env"), dict):
            data["env"], env_extra = split_unknown_keys(data["env"], EnvConfig)
            extra += [f"env.{k}" for k in env_extra]
        if isinstance(data.get("config"), dict):  # training options added since: no use to a player
            data["config"], config_extra = split_unknown_keys(data["config"])
            # The config's env is the card's env (`check` reads it from there): named once, above.
            extra += [f"config.{k}" for k in config_extra if not k.startswith("env.")]
        if extra:
            print(f"warning: {source}: ignoring model card fields this dlswm does not know: {', '.join(extra)}",
                  file=sys.stderr)
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as e:
            raise UserError(f"{source} has incomplete dlswm metadata ({e})") from None

    def check(self, source: str, input_shape: list[Any], logits_width: Any) -> None:
        """Everything `play` and `bench` rely on, before any work: the environment the card
        describes, its game's action set and the graph's input and output agree. ale-py's vector env
        does not check actions: an action set of another game hangs its `step`."""
        from dlswm.config import Config
        from dlswm.runtime.atari import resolve_game

        if not isinstance(self.env, dict) or not isinstance(self.config, dict):
            raise UserError(f"{source}: the model card's env and config must be objects")
        try:
            env = EnvConfig(**self.env)
            Config.from_dict({**self.config, "env": self.env})  # range-checks everything, the env too
            self.config["policy"]["eval_temperature"]  # noqa: B018 (play's default temperature)
        except (TypeError, KeyError, AttributeError) as e:
            raise UserError(f"{source}: the model card's config is incomplete ({type(e).__name__}: {e})") from None
        except UserError as e:
            raise UserError(f"{source}: the model card's {e}") from None
        game = resolve_game(env.game, env.full_action_space)
        if resolve_game(self.game).name != game.name:
            raise UserError(f"{source}: the model card names the game {self.game} but its env plays {env.game}")
        if list(game.action_ids) != list(self.action_ids):
            raise UserError(f"{source}: the model's {len(self.action_ids)} actions do not match {game.name}'s "
                            f"{game.num_actions} in this ale-py; it was exported for another action set")
        if isinstance(logits_width, int) and logits_width != len(self.action_ids):
            raise UserError(f"{source}: the model outputs {logits_width} logits but its card lists "
                            f"{len(self.action_ids)} actions")
        expected = [env.frame_stack, env.frame_size, env.frame_size]
        if [d if isinstance(d, int) else None for d in input_shape[1:]] not in (expected, [None] * 3):
            raise UserError(f"{source}: the model reads frames of shape {input_shape[1:]} but its card's env "
                            f"makes {expected} (frame_stack, frame_size, frame_size)")
