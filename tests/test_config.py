import pytest

from dlswm.config import Config, PRESETS, apply_overrides, resolve
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
