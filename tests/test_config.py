"""The typed config: presets, typed `--set` overrides, a range beside every numeric field, consistency checks."""

import re

import pytest

from dlswm.config import PRESETS, Config, apply_overrides, ranges, resolve, validate
from dlswm.errors import UserError


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_round_trip_through_dict(preset):
    cfg = resolve(preset, "Breakout", seed=3)
    again = Config.from_dict(cfg.to_dict())
    assert again == cfg and again.digest() == cfg.digest()
    assert cfg.preset == preset and cfg.env.game == "Breakout" and cfg.seed == 3


def test_paper_preset_is_the_published_schedule():
    s = resolve("paper").schedule
    assert s.iterations == len(s.wm_epochs) == len(s.ppo_updates) == 15
    assert s.initial_steps + (s.iterations - 1) * s.steps_per_iteration == 102_400
    assert sum(s.ppo_updates) == 19_000


def test_overrides_are_typed_and_change_the_digest():
    cfg = resolve("tiny")
    new = apply_overrides(cfg, ["ppo.lr=3e-4", "schedule.wm_epochs=4,2", "dynamics.stop_embedding_grad=true",
                                "seed=7"])
    assert new.ppo.lr == 3e-4 and new.schedule.wm_epochs == (4, 2)
    assert new.dynamics.stop_embedding_grad is True and new.seed == 7
    assert new.digest() != cfg.digest() and cfg.ppo.lr != 3e-4  # the original is untouched


@pytest.mark.parametrize("override, message", [
    ("ppo.lrr=1", "did you mean: lr"),
    ("ppo.lr=abc", "expects float"),
    ("ppo", "section.field=value"),
    ("env=1", "unknown config key"),
    ("nope.x=1", "unknown config key"),
    ("dynamics.stop_embedding_grad=maybe", "expects bool"),
])
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(UserError, match=message):
        apply_overrides(resolve("tiny"), [override])


def test_unknown_preset_names_the_valid_ones():
    with pytest.raises(UserError, match="tiny, cpu, paper"):
        resolve("huge")


# Each came from trying bad values as a user would; before range checks they crashed, hung or ran on.
@pytest.mark.parametrize("override, message", [
    ("schedule.collect_envs=0", "schedule.collect_envs=0 is out of range: expected 1 <= value"),  # segfault
    ("schedule.eval_episodes=0", "schedule.eval_episodes=0 is out of range"),  # segfault after an iteration
    ("env.frame_stack=0", "env.frame_stack=0 is out of range"),  # hang
    ("vqvae.batch_size=0", "vqvae.batch_size=0 is out of range"),
    ("schedule.initial_steps=0", "schedule.initial_steps=0 is out of range"),
    ("ppo.num_envs=0", "ppo.num_envs=0 is out of range"),
    ("ppo.lr=nan", "ppo.lr=nan is out of range: expected 0 < value"),
    ("ppo.lr=0", "ppo.lr=0.0 is out of range: expected 0 < value"),
    ("ppo.gamma=1.5", "ppo.gamma=1.5 is out of range: expected 0 <= value <= 1"),
    ("vqvae.ema_decay=1", "expected 0 <= value < 1"),
    ("schedule.wm_epochs=2,-1", "schedule.wm_epochs=2,-1 is out of range"),
    ("seed=-1", "seed=-1 is out of range"),
    ("env.frame_size=50", "multiple of 16"),
    ("vqvae.channels=", "vqvae.channels is empty"),
    ("env.grayscale=false", "grayscale=false is not supported"),
    ("dynamics.kernel_size=4", "must be odd"),
    ("dynamics.teacher_forcing_steps=7", "longer than dynamics.seq_len=6"),
    ("schedule.iterations=3", "schedule.wm_epochs has 2 entries"),
    ("schedule.initial_steps=20", "shorter than one training window"),
    ("schedule.steps_per_iteration=3", "fewer than schedule.collect_envs=4"),
])
def test_out_of_range_and_inconsistent_values_are_refused_naming_the_key(override, message):
    with pytest.raises(UserError, match=re.escape(message)):
        resolve("tiny", "Pong", [override])


def test_ppo_on_real_steps_refuses_a_greedy_collection():
    """PPO on the real steps weighs each by the probability it was drawn with; greedy has none (the
    run would otherwise stop on an assert after its first iteration's training)."""
    with pytest.raises(UserError, match=re.escape("ppo.real_epochs needs policy.collect_temperature > 0")):
        resolve("tiny", "Pong", ["ppo.real_epochs=1", "policy.collect_temperature=0"])
    resolve("tiny", "Pong", ["ppo.real_epochs=1", "policy.collect_temperature=0.5"])


def test_motion_weight_refuses_a_stack_of_one_frame():
    """Motion is the change between a stack's frames: with one frame the weights would all be 1 and
    the option would silently do nothing."""
    with pytest.raises(UserError, match=re.escape("vqvae.motion_weight=5.0 needs env.frame_stack >= 2")):
        resolve("tiny", "Pong", ["vqvae.motion_weight=5", "env.frame_stack=1"])
    resolve("tiny", "Pong", ["vqvae.motion_weight=5", "env.frame_stack=2"])
    with pytest.raises(UserError, match=re.escape("vqvae.motion_weight=-1.0 is out of range")):
        resolve("tiny", "Pong", ["vqvae.motion_weight=-1"])


def test_every_preset_passes_its_own_range_checks_and_every_numeric_field_has_a_range():
    """Ranges sit beside their fields: a new numeric field written without one fails here, where
    before it was silently unchecked."""
    for name in PRESETS:
        validate(resolve(name))
    numeric = []

    def walk(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif not isinstance(value, (bool, str)):
                numeric.append(f"{prefix}{key}")

    walk(Config().to_dict())
    assert sorted(ranges()) == sorted(numeric)


def test_a_saved_config_with_a_bad_value_is_refused_on_load():
    data = resolve("tiny").to_dict()
    data["ppo"]["gamma"] = 2.0
    with pytest.raises(UserError, match="ppo.gamma=2.0"):
        Config.from_dict(data)
