"""Every hyperparameter of dlswm, in typed dataclasses: the one source of truth.

Presets: `tiny` (tests in seconds), `cpu` (a 2-core laptop, hours), `paper` (Robine et al.'s published
architecture and schedule). Any field can be overridden as `section.field=value`. The resolved
config is saved with every checkpoint and inside every exported model (`Config.to_dict`).

Torch-free on purpose: the runtime reads configs out of ONNX metadata.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field

from dlswm.errors import UserError, close_matches_hint


@dataclass
class EnvConfig:
    """The Atari 100k observation and evaluation protocol (ale_py AtariVectorEnv arguments)."""

    game: str = "Pong"
    frame_size: int = 96  # square grayscale frames
    frame_stack: int = 4  # the article's stack of the 4 most recent frames
    frameskip: int = 4
    maxpool: bool = True  # max over the last two raw frames of each skip
    grayscale: bool = True
    noop_max: int = 30
    repeat_action_probability: float = 0.0  # no sticky actions
    max_episode_steps: int = 27_000  # 108,000 frames
    full_action_space: bool = False  # minimal action set
    fire_reset: bool = False  # press FIRE after reset (off: the agent learns to serve)


@dataclass
class VQVAEConfig:
    channels: tuple[int, ...] = (32, 64, 128, 256)  # one 4x4 stride-2 conv each: 96 -> 6
    res_blocks: int = 2
    embedding_dim: int = 32
    codebook_size: int = 128  # K
    commitment_cost: float = 0.25
    ema_decay: float = 0.99
    ema_epsilon: float = 1e-5
    batch_size: int = 40
    lr: float = 1e-4
    warmup_epochs: int = 50  # on the first data, at lr * warmup_lr_scale
    warmup_lr_scale: float = 10.0


@dataclass
class DynamicsConfig:
    hidden_channels: int = 128
    layers: int = 2
    kernel_size: int = 5
    reward_channels: int = 32
    reward_hidden: int = 512
    seq_len: int = 11
    teacher_forcing_steps: int = 4  # later steps are fed the model's own samples
    batch_size: int = 4
    lr: float = 5e-4
    reward_lr: float = 1e-3
    reward_trunk_grad: float = 1e-6  # scale of the reward loss's gradient into the LSTM (released code)
    # The article lets dynamics errors reach the embedding; the released code stops that gradient.
    stop_embedding_grad: bool = False
    vqvae_every: int = 2  # one VQ-VAE batch every this many dynamics batches
    # A head beside the reward's that predicts a life lost on each step (the article has none):
    # imagination then ends the returns where it samples one, as PPO on Atari ends episodes at a
    # life loss, so the policy learns what costs a life.
    life_loss_head: bool = False


@dataclass
class PolicyConfig:
    conv_channels: int = 64
    kernel_size: int = 5
    hidden: int = 512
    collect_temperature: float = 1.5
    eval_temperature: float = 0.5


@dataclass
class PPOConfig:
    num_envs: int = 16  # imagined environments
    rollout_steps: int = 50  # imagined horizon, each rollout starts from a real observation
    epochs: int = 4
    minibatch_size: int = 256
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_coef: float = 0.1
    value_clip_coef: float = 0.1
    value_coef: float = 0.5
    entropy_coef: float = 0.01
    normalize_advantages: bool = True
    # The critic's value of the state after the last imagined step stands in for the rest of the
    # episode (a cut, not an end); false treats the horizon as terminal, as the released code does.
    bootstrap_horizon: bool = True
    # Trust region across iterations: + coef * KL(policy at the iteration's start || policy) on the
    # imagined states, so PPO cannot move far from the policy whose real data the model has seen
    # (0: off). Against the policy exploiting the world model's errors on states it never saw.
    anchor_kl_coef: float = 0.0
    lr: float = 2.5e-4
    max_grad_norm: float = 0.5


@dataclass
class ScheduleConfig:
    iterations: int = 15
    initial_steps: int = 12_800  # real agent steps in iteration 1 (random policy)
    steps_per_iteration: int = 6_400
    collect_envs: int = 8
    wm_epochs: tuple[int, ...] = (140, 32, 24, 20, 16, 14, 12, 11, 10, 9, 8, 8, 7, 7, 6)
    ppo_updates: tuple[int, ...] = (1000,) * 7 + (2000,) + (1000,) * 3 + (2000,) + (1000,) * 2 + (3000,)
    eval_episodes: int = 8
    # The collection envs run on across iterations (the released code's one env): episodes longer
    # than an iteration's steps / collect_envs continue, so the buffer reaches deep into the game.
    persistent_envs: bool = True


@dataclass
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    vqvae: VQVAEConfig = field(default_factory=VQVAEConfig)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    preset: str = "paper"
    seed: int = 0
    # bf16 autocast of world-model training, imagination and the policy's body in PPO (its heads stay
    # fp32), where the hardware runs bf16 natively (CUDA from Ampere on; CPUs with AVX512-BF16 or
    # AMX); fp32 elsewhere, whatever this says.
    amp: bool = True
    fused_adam: bool = True  # Adam's update as one fused kernel: the same maths, fewer passes over memory
    # torch.compile of the dynamics step and the policy (the same maths as one fused graph each):
    # auto = on CUDA, where eager runs one small kernel per op; on / off anywhere.
    compile: str = "auto"
    # The replay buffer's frames mirrored on the training device, batches gathered there (auto: on
    # CUDA; the paper schedule's frames are 0.95 GB); on the CPU they already are where they train.
    buffer_on_device: str = "auto"

    @property
    def latent_size(self) -> int:
        """Side of the latent grid: each encoder conv halves the frame (96 -> 6 with 4 convs)."""
        return self.env.frame_size // 2 ** len(self.vqvae.channels)

    def to_dict(self) -> dict[str, typing.Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, typing.Any]) -> Config:
        """Inverse of `to_dict`; keys renamed since (`RENAMED_KEYS`) are mapped to their new names,
        unknown keys are an error, missing keys keep their defaults; the result is range-checked
        (`validate`). Every saved config (config.json, checkpoints, model cards) is read here."""
        return validate(_from_dict(cls, rename_keys(data), prefix=""))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        """Short content hash: two runs with the same digest trained with the same settings."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]


# Config keys renamed or moved since configs were first saved: old dotted key -> new dotted key. A
# saved config (a run to resume or export, a model card to play) is read with the new names, so a
# rename never strands a run. Add an entry with every rename; never reuse an old key.
RENAMED_KEYS: dict[str, str] = {}


def rename_keys(data: dict[str, typing.Any]) -> dict[str, typing.Any]:
    """A copy of a saved config's dict with the keys of `RENAMED_KEYS` under their new names."""
    data = copy.deepcopy(data)
    for old, new in RENAMED_KEYS.items():
        *old_sections, old_leaf = old.split(".")
        path = [data]  # the dicts from the root down to the old key's section
        for part in old_sections:
            path.append(path[-1].get(part) if isinstance(path[-1], dict) else None)
        if not isinstance(path[-1], dict) or old_leaf not in path[-1]:
            continue
        value = path[-1].pop(old_leaf)
        for parent, part, node in reversed(list(zip(path, old_sections, path[1:]))):
            if not node:  # a section the rename emptied (a moved key's old home) goes too
                del parent[part]
        *new_sections, new_leaf = new.split(".")
        target = data
        for part in new_sections:
            target = target.setdefault(part, {})
        target.setdefault(new_leaf, value)
    return data


def _from_dict(cls: type, data: dict[str, typing.Any], prefix: str) -> typing.Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise UserError(f"unknown config key '{prefix}{sorted(unknown)[0]}'")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(hint, value, prefix=f"{prefix}{name}.")
        elif typing.get_origin(hint) is tuple:
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _tiny() -> Config:
    """Real components at toy size: a whole train -> export -> play cycle in about a minute."""
    return Config(
        # Weights large enough to dominate an ONNX file's fixed overhead (int8 then shrinks it ~4x).
        vqvae=VQVAEConfig(channels=(16, 32, 32, 64), res_blocks=1, embedding_dim=8, codebook_size=16,
                          batch_size=16, warmup_epochs=1),
        dynamics=DynamicsConfig(hidden_channels=16, kernel_size=3, reward_channels=8, reward_hidden=32,
                                seq_len=6, teacher_forcing_steps=2, batch_size=8),
        policy=PolicyConfig(conv_channels=8, kernel_size=3, hidden=32),
        ppo=PPOConfig(num_envs=8, rollout_steps=10, epochs=2, minibatch_size=40),
        schedule=ScheduleConfig(iterations=2, initial_steps=256, steps_per_iteration=128, collect_envs=4,
                                wm_epochs=(2, 1), ppo_updates=(3, 3), eval_episodes=1),
        preset="tiny",
    )


def _cpu() -> Config:
    """The paper's networks with a smaller ConvLSTM and a ~15x shorter schedule for 2 CPU cores."""
    return Config(
        vqvae=VQVAEConfig(warmup_epochs=5),
        dynamics=DynamicsConfig(hidden_channels=64, kernel_size=3, batch_size=16),
        # A short schedule leaves the policy short of converged: a sharpened (T=0.5) policy locked
        # into one column in CrazyClimber and scored below random. PPO optimizes the T=1 policy, so
        # that is what is evaluated. Without a trust region every run collapsed from iteration 3 or 4
        # as the policy exploited the model (a 3x entropy bonus only delayed it); with the KL anchor
        # to the iteration's starting policy no run collapsed, and the paper's entropy bonus is back.
        policy=PolicyConfig(eval_temperature=1.0),
        ppo=PPOConfig(num_envs=64, entropy_coef=0.01, anchor_kl_coef=0.3),
        schedule=ScheduleConfig(iterations=8, initial_steps=6_400, steps_per_iteration=3_200,
                                wm_epochs=(12, 4, 3, 3, 2, 2, 2, 2),
                                ppo_updates=(100, 100, 100, 100, 150, 150, 150, 200), eval_episodes=8),
        preset="cpu",
    )


PRESETS: dict[str, typing.Callable[[], Config]] = {"tiny": _tiny, "cpu": _cpu, "paper": Config}


def load_preset(name: str) -> Config:
    if name not in PRESETS:
        raise UserError(f"unknown preset '{name}'; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]()


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """`["ppo.lr=3e-4", "schedule.wm_epochs=4,2"]` applied to a copy of `cfg`, type-checked."""
    data = cfg.to_dict()
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UserError(f"override '{item}' is not of the form section.field=value")
        *sections, leaf = key.strip().split(".")
        owner: typing.Any = Config
        node = data
        for part in sections:
            hint = typing.get_type_hints(owner).get(part)
            if not dataclasses.is_dataclass(hint):
                raise UserError(f"unknown config key '{key}'{close_matches_hint(part, list(node))}")
            owner, node = hint, node[part]
        hints = typing.get_type_hints(owner)
        if leaf not in hints or dataclasses.is_dataclass(hints[leaf]):
            raise UserError(f"unknown config key '{key}'{close_matches_hint(leaf, list(hints))}")
        node[leaf] = _parse(raw.strip(), hints[leaf], key)
    return Config.from_dict(data)


def _parse(raw: str, hint: typing.Any, key: str) -> typing.Any:
    try:
        if hint is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return raw.lower() in ("true", "1", "yes")
        if typing.get_origin(hint) is tuple:
            item_type = typing.get_args(hint)[0]
            return tuple(item_type(x) for x in raw.split(",") if x.strip())
        return hint(raw)
    except ValueError:
        name = getattr(hint, "__name__", str(hint))
        raise UserError(f"config key '{key}' expects {name}, got '{raw}'") from None


def resolve(preset: str, game: str | None = None, overrides: list[str] | None = None,
            seed: int | None = None) -> Config:
    """Preset, then game and seed, then `--set` overrides: the order a user reads them in."""
    cfg = load_preset(preset)
    if game is not None:
        cfg.env.game = game
    if seed is not None:
        cfg.seed = seed
    return apply_overrides(cfg, overrides or [])


# ---- ranges ----------------------------------------------------------------------------------------
# Every numeric field's valid range, checked on every config a run, a resume or a model card uses,
# before any work: out-of-range values otherwise crash, hang or segfault deep inside a run.
_POSITIVE = (1, None)
RANGES: dict[str, tuple[float | None, float | None]] = {
    "env.frame_size": _POSITIVE, "env.frame_stack": _POSITIVE, "env.frameskip": _POSITIVE, "env.noop_max": (0, None),
    "env.repeat_action_probability": (0, 1), "env.max_episode_steps": _POSITIVE,
    "vqvae.channels": _POSITIVE, "vqvae.res_blocks": (0, None), "vqvae.embedding_dim": _POSITIVE,
    "vqvae.codebook_size": (2, None), "vqvae.commitment_cost": (0, None), "vqvae.ema_decay": (0, 1),
    "vqvae.ema_epsilon": (0, None), "vqvae.batch_size": _POSITIVE, "vqvae.lr": (0, None),
    "vqvae.warmup_epochs": (0, None), "vqvae.warmup_lr_scale": (0, None),
    "dynamics.hidden_channels": _POSITIVE, "dynamics.layers": _POSITIVE, "dynamics.kernel_size": _POSITIVE,
    "dynamics.reward_channels": _POSITIVE, "dynamics.reward_hidden": _POSITIVE, "dynamics.seq_len": (2, None),
    "dynamics.teacher_forcing_steps": _POSITIVE, "dynamics.batch_size": _POSITIVE, "dynamics.lr": (0, None),
    "dynamics.reward_lr": (0, None), "dynamics.reward_trunk_grad": (0, 1), "dynamics.vqvae_every": _POSITIVE,
    "policy.conv_channels": _POSITIVE, "policy.kernel_size": _POSITIVE, "policy.hidden": _POSITIVE,
    "policy.collect_temperature": (0, None), "policy.eval_temperature": (0, None),
    "ppo.num_envs": _POSITIVE, "ppo.rollout_steps": _POSITIVE, "ppo.epochs": _POSITIVE, "ppo.minibatch_size": _POSITIVE,
    "ppo.gamma": (0, 1), "ppo.gae_lambda": (0, 1), "ppo.clip_coef": (0, None), "ppo.value_clip_coef": (0, None),
    "ppo.value_coef": (0, None), "ppo.entropy_coef": (0, None), "ppo.anchor_kl_coef": (0, None),
    "ppo.lr": (0, None), "ppo.max_grad_norm": (0, None),
    "schedule.iterations": _POSITIVE, "schedule.initial_steps": _POSITIVE, "schedule.steps_per_iteration": _POSITIVE,
    "schedule.collect_envs": _POSITIVE, "schedule.wm_epochs": (0, None), "schedule.ppo_updates": (0, None),
    "schedule.eval_episodes": _POSITIVE, "seed": (0, 2**32 - 1),
}
# Fields where the bound itself is not a valid value (a learning rate of 0 trains nothing).
_EXCLUSIVE_LOW = {"vqvae.ema_epsilon", "vqvae.lr", "vqvae.warmup_lr_scale", "dynamics.lr", "dynamics.reward_lr",
                  "ppo.clip_coef", "ppo.value_clip_coef", "ppo.lr", "ppo.max_grad_norm"}
_EXCLUSIVE_HIGH = {"vqvae.ema_decay"}


def validate(cfg: Config) -> Config:
    """Every value in range and the sections consistent with each other; else one UserError naming
    the key. Returns `cfg` for chaining."""
    data = cfg.to_dict()
    for key, (low, high) in RANGES.items():
        node: typing.Any = data
        for part in key.split("."):
            node = node[part]
        for value in (node if isinstance(node, (tuple, list)) else (node,)):
            if not math.isfinite(value) or (low is not None and (value <= low if key in _EXCLUSIVE_LOW else value < low)) \
                    or (high is not None and (value >= high if key in _EXCLUSIVE_HIGH else value > high)):
                lo = "" if low is None else f"{low} {'<' if key in _EXCLUSIVE_LOW else '<='} "
                hi = "" if high is None else f" {'<' if key in _EXCLUSIVE_HIGH else '<='} {high}"
                raise UserError(f"config {key}={_show(node)} is out of range: expected {lo}value{hi}")
    _check_consistency(cfg)
    return cfg


SWITCH_CHOICES = ("auto", "on", "off")  # config compile and buffer_on_device


def _check_consistency(cfg: Config) -> None:
    e, v, d, s = cfg.env, cfg.vqvae, cfg.dynamics, cfg.schedule
    for key in ("compile", "buffer_on_device"):
        if getattr(cfg, key) not in SWITCH_CHOICES:
            raise UserError(f"config {key}={getattr(cfg, key)} is not one of {', '.join(SWITCH_CHOICES)}")
    if not v.channels:
        raise UserError("config vqvae.channels is empty: give one width per encoder layer, e.g. 32,64,128,256")
    if not e.grayscale:
        raise UserError("config env.grayscale=false is not supported: the networks read one grayscale plane per frame")
    side = 2 ** len(v.channels)
    if e.frame_size % side:
        raise UserError(f"config env.frame_size={e.frame_size} does not divide into the {len(v.channels)} "
                        f"stride-2 layers of vqvae.channels: use a multiple of {side} (96 gives a 6x6 grid with 4)")
    for key, k in (("dynamics.kernel_size", d.kernel_size), ("policy.kernel_size", cfg.policy.kernel_size)):
        if k % 2 == 0:
            raise UserError(f"config {key}={k} must be odd (a 'same' convolution keeps the latent grid's size)")
    if d.teacher_forcing_steps > d.seq_len:
        raise UserError(f"config dynamics.teacher_forcing_steps={d.teacher_forcing_steps} is longer than "
                        f"dynamics.seq_len={d.seq_len}")
    for key in ("wm_epochs", "ppo_updates"):
        if len(getattr(s, key)) < s.iterations:
            raise UserError(f"config schedule.iterations={s.iterations} but schedule.{key} has "
                            f"{len(getattr(s, key))} entries: give one per iteration")
    # The first data must hold training windows: each env's share of it is one stream.
    if s.steps_per_iteration < s.collect_envs:
        raise UserError(f"config schedule.steps_per_iteration={s.steps_per_iteration} is fewer than "
                        f"schedule.collect_envs={s.collect_envs}: each env must take at least one step")
    if s.initial_steps // s.collect_envs < d.seq_len:
        raise UserError(f"config schedule.initial_steps={s.initial_steps} over schedule.collect_envs={s.collect_envs} "
                        f"envs is {s.initial_steps // s.collect_envs} steps each, shorter than one training "
                        f"window (dynamics.seq_len={d.seq_len})")


def _show(value: typing.Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
