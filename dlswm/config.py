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
from typing import Annotated

from dlswm.errors import UserError, close_matches_hint


@dataclass(frozen=True)
class Range:
    """A numeric field's valid values, written beside the field (`Annotated[int, POSITIVE]`) and
    checked on every config a run, a resume or a model card uses, before any work: out-of-range
    values otherwise crash, hang or segfault deep inside a run. A tuple field checks each item."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False  # the bound itself is not valid (a learning rate of 0 trains nothing)
    open_high: bool = False

    def admits(self, value: float) -> bool:
        return math.isfinite(value) and not (
            self.low is not None and (value <= self.low if self.open_low else value < self.low)) and not (
            self.high is not None and (value >= self.high if self.open_high else value > self.high))

    def describe(self) -> str:
        lo = "" if self.low is None else f"{self.low} {'<' if self.open_low else '<='} "
        hi = "" if self.high is None else f" {'<' if self.open_high else '<='} {self.high}"
        return f"{lo}value{hi}"


POSITIVE, NON_NEGATIVE, UNIT = Range(1), Range(0), Range(0, 1)
ABOVE_ZERO = Range(0, open_low=True)


@dataclass
class EnvConfig:
    """The Atari 100k observation and evaluation protocol (ale_py AtariVectorEnv arguments)."""

    game: str = "Pong"
    frame_size: Annotated[int, POSITIVE] = 96  # square grayscale frames
    frame_stack: Annotated[int, POSITIVE] = 4  # the article's stack of the 4 most recent frames
    frameskip: Annotated[int, POSITIVE] = 4
    maxpool: bool = True  # max over the last two raw frames of each skip
    grayscale: bool = True
    noop_max: Annotated[int, NON_NEGATIVE] = 30
    repeat_action_probability: Annotated[float, UNIT] = 0.0  # no sticky actions
    max_episode_steps: Annotated[int, POSITIVE] = 27_000  # 108,000 frames
    full_action_space: bool = False  # minimal action set
    fire_reset: bool = False  # press FIRE after reset (off: the agent learns to serve)


@dataclass
class VQVAEConfig:
    channels: Annotated[tuple[int, ...], POSITIVE] = (32, 64, 128, 256)  # one 4x4 stride-2 conv each: 96 -> 6
    res_blocks: Annotated[int, NON_NEGATIVE] = 2
    embedding_dim: Annotated[int, POSITIVE] = 32
    codebook_size: Annotated[int, Range(2)] = 128  # K
    commitment_cost: Annotated[float, NON_NEGATIVE] = 0.25
    ema_decay: Annotated[float, Range(0, 1, open_high=True)] = 0.99
    ema_epsilon: Annotated[float, ABOVE_ZERO] = 1e-5
    batch_size: Annotated[int, POSITIVE] = 40
    lr: Annotated[float, ABOVE_ZERO] = 1e-4
    warmup_epochs: Annotated[int, NON_NEGATIVE] = 50  # on the first data, at lr * warmup_lr_scale
    warmup_lr_scale: Annotated[float, ABOVE_ZERO] = 10.0
    # Reconstruction weight of the pixels that changed since the stack's previous frame: each pixel's
    # log-likelihood is weighted 1 + motion_weight * |x_s - x_(s-1)| (pixels in [0, 1]), renormalized
    # to mean 1 per sample (0: the article's unweighted likelihood). Small moving objects (a climber's
    # arms, a falling pot, a ball) otherwise cost the likelihood too little to earn codes.
    motion_weight: Annotated[float, NON_NEGATIVE] = 0.0


@dataclass
class DynamicsConfig:
    hidden_channels: Annotated[int, POSITIVE] = 128
    layers: Annotated[int, POSITIVE] = 2
    kernel_size: Annotated[int, POSITIVE] = 5
    reward_channels: Annotated[int, POSITIVE] = 32
    reward_hidden: Annotated[int, POSITIVE] = 512
    seq_len: Annotated[int, Range(2)] = 11
    teacher_forcing_steps: Annotated[int, POSITIVE] = 4  # later steps are fed the model's own samples
    batch_size: Annotated[int, POSITIVE] = 4
    lr: Annotated[float, ABOVE_ZERO] = 5e-4
    reward_lr: Annotated[float, ABOVE_ZERO] = 1e-3
    reward_trunk_grad: Annotated[float, UNIT] = 1e-6  # scale of the reward loss's gradient into the LSTM (released code)
    # The article lets dynamics errors reach the embedding; the released code stops that gradient.
    stop_embedding_grad: bool = False
    vqvae_every: Annotated[int, POSITIVE] = 2  # one VQ-VAE batch every this many dynamics batches
    # A head beside the reward's that predicts a life lost on each step (the article has none):
    # imagination then ends the returns where it samples one, as PPO on Atari ends episodes at a
    # life loss, so the policy learns what costs a life.
    life_loss_head: bool = False


@dataclass
class PolicyConfig:
    conv_channels: Annotated[int, POSITIVE] = 64
    kernel_size: Annotated[int, POSITIVE] = 5
    hidden: Annotated[int, POSITIVE] = 512
    collect_temperature: Annotated[float, NON_NEGATIVE] = 1.5
    eval_temperature: Annotated[float, NON_NEGATIVE] = 0.5


@dataclass
class PPOConfig:
    num_envs: Annotated[int, POSITIVE] = 16  # imagined environments
    rollout_steps: Annotated[int, POSITIVE] = 50  # imagined horizon, each rollout starts from a real observation
    epochs: Annotated[int, POSITIVE] = 4
    minibatch_size: Annotated[int, POSITIVE] = 256
    gamma: Annotated[float, UNIT] = 0.99
    gae_lambda: Annotated[float, UNIT] = 0.95
    clip_coef: Annotated[float, ABOVE_ZERO] = 0.1
    value_clip_coef: Annotated[float, ABOVE_ZERO] = 0.1
    value_coef: Annotated[float, NON_NEGATIVE] = 0.5
    entropy_coef: Annotated[float, NON_NEGATIVE] = 0.01
    normalize_advantages: bool = True
    # The critic's value of the state after the last imagined step stands in for the rest of the
    # episode (a cut, not an end); false treats the horizon as terminal, as the released code does.
    bootstrap_horizon: bool = True
    # Trust region across iterations: + coef * KL(policy at the imagined phase's start || policy) on
    # the imagined states, so PPO cannot move far from the policy whose real data the model has seen
    # (0: off). Against the policy exploiting the world model's errors on states it never saw. (With
    # `real_epochs`, PPO on the real steps anchors to the policy that played them.)
    anchor_kl_coef: Annotated[float, NON_NEGATIVE] = 0.0
    # Each imagined step's reward is the reward head's expected sign, p(+1) - p(-1), not a sign
    # sampled from it (the article samples): the same mean return without the sampling noise, which
    # is nearly all of a return where rewards are rare (docs/experiments.md).
    expected_reward: bool = False
    # PPO epochs on each iteration's real collection, as the agent played it, before the world
    # model learns from it (train/real_ppo.py): advantages the policy cannot get by exploiting the
    # model's errors, from steps collected anyway (0: off, the article's; iteration 1's random
    # steps are never used). Needs a collection temperature > 0.
    real_epochs: Annotated[int, NON_NEGATIVE] = 0
    lr: Annotated[float, ABOVE_ZERO] = 2.5e-4
    max_grad_norm: Annotated[float, ABOVE_ZERO] = 0.5


@dataclass
class ScheduleConfig:
    iterations: Annotated[int, POSITIVE] = 15
    initial_steps: Annotated[int, POSITIVE] = 12_800  # real agent steps in iteration 1 (random policy)
    steps_per_iteration: Annotated[int, POSITIVE] = 6_400
    collect_envs: Annotated[int, POSITIVE] = 8
    wm_epochs: Annotated[tuple[int, ...], NON_NEGATIVE] = (140, 32, 24, 20, 16, 14, 12, 11, 10, 9, 8, 8, 7, 7, 6)
    ppo_updates: Annotated[tuple[int, ...], NON_NEGATIVE] = (1000,) * 7 + (2000,) + (1000,) * 3 + (2000,) + (1000,) * 2 + (3000,)
    eval_episodes: Annotated[int, POSITIVE] = 8
    # Mean steps each env holds one uniformly random action in iteration 1's random collection
    # (holds drawn uniformly from 1..2*random_hold-1; temporally extended exploration, as in
    # Dabney et al.'s ez-greedy). 1: a new action every step, the article's. Longer holds reach
    # rewards that per-step random play never does (Freeway's far side of the road).
    random_hold: Annotated[int, Range(1, 1000)] = 1
    # The collection envs run on across iterations (the released code's one env): episodes longer
    # than an iteration's steps / collect_envs continue, so the buffer reaches deep into the game.
    persistent_envs: bool = True
    # Share of every sampled batch (the world model's windows, the VQ-VAE's frames, the imagined
    # rollouts' start states) drawn from the newest collection, the rest uniform over the buffer
    # (0: uniform, the article's): the policy's newest states are otherwise a small slice of a
    # buffer that iteration 1's random play dominates (docs/experiments.md).
    recent_fraction: Annotated[float, UNIT] = 0.0


@dataclass
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    vqvae: VQVAEConfig = field(default_factory=VQVAEConfig)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    preset: str = "paper"
    seed: Annotated[int, Range(0, 2**32 - 1)] = 0
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


def split_unknown_keys(data: dict[str, typing.Any], cls: type = Config) -> tuple[dict[str, typing.Any], list[str]]:
    """A saved config (or one section of it, `cls`) without the keys this dlswm does not know, and
    those keys, dotted; a whole config's renamed keys (`RENAMED_KEYS`) are known. For readers that need
    only part of a config from a newer dlswm (a model card on a board whose runtime is older than the
    trainer); everything else reads with `Config.from_dict`, which refuses unknown keys."""
    hints = typing.get_type_hints(cls)
    known, unknown = {}, []
    for name, value in (rename_keys(data) if cls is Config else data).items():
        if name not in hints:
            unknown.append(name)
        elif dataclasses.is_dataclass(hints[name]) and isinstance(value, dict):
            known[name], inner = split_unknown_keys(value, hints[name])
            unknown += [f"{name}.{key}" for key in inner]
        else:
            known[name] = value
    return known, sorted(unknown)


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
        # The policy PPO optimizes (T=1) is evaluated, and a KL anchor keeps PPO from exploiting the
        # model: without them cpu runs collapsed (docs/experiments.md has the runs).
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


def ranges(cls: type = None, prefix: str = "") -> dict[str, Range]:
    """Every field's Range by dotted key, read from the annotations beside the fields."""
    cls = cls or Config
    out = {}
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        if dataclasses.is_dataclass(hint):
            out.update(ranges(hint, f"{prefix}{name}."))
        elif typing.get_origin(hint) is Annotated:
            out.update({f"{prefix}{name}": r for r in hint.__metadata__ if isinstance(r, Range)})
    return out


def validate(cfg: Config) -> Config:
    """Every value in range and the sections consistent with each other; else one UserError naming
    the key. Returns `cfg` for chaining."""
    data = cfg.to_dict()
    for key, allowed in ranges().items():
        node: typing.Any = data
        for part in key.split("."):
            node = node[part]
        if not all(allowed.admits(v) for v in (node if isinstance(node, (tuple, list)) else (node,))):
            raise UserError(f"config {key}={_show(node)} is out of range: expected {allowed.describe()}")
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
    if v.motion_weight > 0 and e.frame_stack < 2:
        raise UserError(f"config vqvae.motion_weight={v.motion_weight} needs env.frame_stack >= 2: "
                        "motion is the change between a stack's frames")
    if cfg.ppo.real_epochs > 0 and cfg.policy.collect_temperature == 0:
        raise UserError("config ppo.real_epochs needs policy.collect_temperature > 0: PPO on the real steps "
                        "weighs each by the probability it was drawn with, and a greedy collection has none")
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
