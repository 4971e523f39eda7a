"""The replay buffer and the collector on real ALE games: the stacks the env showed rebuilt exactly,
observation/action/reward alignment across episode ends and chunks, life losses, the device mirror."""


import numpy as np
import pytest
import torch

from dlswm.config import resolve
from dlswm.train.buffer import ReplayBuffer



def test_buffer_rebuilds_exactly_the_stacks_the_env_showed(real_chunk, tmp_path):
    cfg, chunk, seen = real_chunk
    path = ReplayBuffer.chunk_path(tmp_path, 1)
    ReplayBuffer.save_chunk(chunk, path)
    buffer = ReplayBuffer.load(tmp_path, 1, cfg.env.frame_stack)
    per_env = len(buffer) // 2
    assert len(buffer) == 2 * len(seen)  # no episode ended in 300 Pong steps: one entry per observation
    assert buffer.first[0] and buffer.first[per_env] and buffer.done[per_env - 1] and buffer.done[-1]
    np.testing.assert_array_equal(buffer.observations(np.arange(per_env)), seen[:, 0])
    np.testing.assert_array_equal(buffer.observations(np.arange(per_env, 2 * per_env)), seen[:, 1])
    starts = buffer.sequence_starts(cfg.dynamics.seq_len)
    seq = buffer.sequences(starts[:3], cfg.dynamics.seq_len)
    assert seq["obs"].shape == (3, cfg.dynamics.seq_len, 4, 96, 96) and not seq["first"][:, 1:].any()
    assert per_env - cfg.dynamics.seq_len + 1 not in starts  # no window crosses into the next stream


def test_buffer_mirrored_on_a_device_gathers_the_same_batches(real_chunk):
    """`buffer_on_device`: stacks gathered from the mirrored frames equal the host's, across the
    zeroed frames before each stream's start and a chunk added after the mirror was made (CPU
    stands in for CUDA)."""
    cfg, chunk, _ = real_chunk
    host, mirrored = ReplayBuffer(cfg.env.frame_stack), ReplayBuffer(cfg.env.frame_stack)
    mirrored.keep_on(torch.device("cpu"))
    for buffer in (host, mirrored):
        buffer.add_chunk(chunk)
    idx = np.arange(len(host))
    torch.testing.assert_close(mirrored.observation_tensor(idx, torch.device("cpu")),
                               torch.from_numpy(host.observations(idx)))
    for buffer in (host, mirrored):
        buffer.add_chunk(chunk)
    starts = host.sequence_starts(cfg.dynamics.seq_len)[::7]
    want = host.sequences(starts, cfg.dynamics.seq_len)
    got = mirrored.sequence_tensors(starts, cfg.dynamics.seq_len, torch.device("cpu"))
    assert mirrored._mirror.shape[0] == len(mirrored)  # the new chunk was copied when next read
    assert sorted(got) == sorted(want) and len(starts) > 20 and starts.max() > len(chunk["frames"])
    for key in want:
        torch.testing.assert_close(got[key], torch.from_numpy(want[key]), msg=key)


def test_collector_records_each_life_lost_on_the_step_that_lost_it():
    """Real CrazyClimber games (5 lives) under a random policy: every episode that ends inside the
    collection lost exactly 5 lives, the last on its final step (the entry before the terminal
    observation). Mutations caught: the flag put on the new observation's entry, `lives` not tracked
    from step to step."""
    from dlswm.train.real_env import Collector, random_policy

    cfg = resolve("tiny", "CrazyClimber")
    collector = Collector(cfg.env, 2, persistent=False)
    try:
        chunk, _, stats = collector.collect(random_policy(9, np.random.default_rng(0)), 8_000, seed=3,
                                            progress=lambda n: None)
    finally:
        collector.close()
    # Streams stop mid-episode too; an episode that ended lost its last life on its final step.
    ended = [(start, end) for start, end in zip(np.flatnonzero(chunk["first"]), np.flatnonzero(chunk["done"]))
             if chunk["life_lost"][end - 1]]
    assert len(ended) == stats["collect/episodes"] >= 2
    for start, end in ended:
        assert chunk["life_lost"][start:end + 1].sum() == 5 and not chunk["life_lost"][end]
    assert stats["collect/life_loss_rate"] == pytest.approx(chunk["life_lost"].sum() / stats["collect/steps"])


@pytest.mark.parametrize("first_steps", [40, 50])
def test_buffer_keeps_obs_action_reward_alignment_across_episode_ends_and_chunks(tmp_path, first_steps):
    """Two collections from a persistent env of 2 games cut at 25 steps: the second chunk continues
    the first's episodes mid-way (40 interactions) or right after both ended (50). Every observation the
    env showed is rebuilt exactly, in order, with the action taken there and the reward that followed;
    the continued stream's context entries are never sampled and start no training window."""
    from dlswm.train.real_env import Collector

    cfg = resolve("tiny", "Pong")
    cfg.env.max_episode_steps = 25
    collector = Collector(cfg.env, 2, persistent=True)
    shown, sent, rewards = [], [], []
    step = Collector._step

    def spy(self, actions):
        out = step(self, actions)
        rewards.append(out[0].copy())
        return out

    rng = np.random.default_rng(0)

    def policy(obs):
        shown.append(obs.copy())
        sent.append(rng.integers(0, 6, len(obs)))
        return sent[-1]

    boundaries = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Collector, "_step", spy)
        for it, steps in enumerate([first_steps, 60], start=1):
            resetting = collector.resetting.copy()
            chunk, env_actions, stats = collector.collect(policy, steps, seed=7, progress=lambda n: None)
            np.testing.assert_array_equal(env_actions, np.stack(sent[len(sent) - len(env_actions):]))
            ReplayBuffer.save_chunk(chunk, ReplayBuffer.chunk_path(tmp_path, it), env_actions)
            boundaries.append((len(shown) - len(env_actions), len(shown), resetting, collector.obs.copy()))
            assert stats["collect/continued"] == float(it == 2)
    collector.close()
    buffer = ReplayBuffer.load(tmp_path, 2, 4)
    assert buffer.done.sum() > 4  # episodes did end inside the streams
    ends = np.cumsum([len(np.load(ReplayBuffer.chunk_path(tmp_path, i))["actions"]) for i in (1, 2)])
    starts = buffer.sequence_starts(cfg.dynamics.seq_len)
    for c, (lo, hi, resetting, final) in enumerate(boundaries):
        chunk_idx = buffer.sample_idx[(buffer.sample_idx >= (ends[c - 1] if c else 0)) & (buffer.sample_idx < ends[c])]
        per_env = np.array_split(chunk_idx, 2)
        for e in range(2):
            skip = int(resetting[e])  # the terminal observation was the last chunk's
            expected = np.stack([s[e] for s in shown[lo + skip:hi]] + [final[e]])
            idx = per_env[e]
            assert len(idx) == len(expected)
            np.testing.assert_array_equal(buffer.observations(idx), expected)
            moved = ~buffer.done[idx[:-1]]  # entries with a transition: the action was played, the reward followed
            np.testing.assert_array_equal(buffer.actions[idx[:-1]][moved], np.stack(sent[lo + skip:hi])[moved, e])
            np.testing.assert_array_equal(buffer.rewards[idx[:-1]][moved], np.stack(rewards[lo + skip:hi])[moved, e])
    context = np.setdiff1d(np.arange(len(buffer)), buffer.sample_idx)
    assert boundaries[1][2].all() == (first_steps == 50)  # both envs reset as the second chunk starts
    assert len(context) == (6 if first_steps == 40 else 0)
    assert not np.isin(context, starts).any() and not np.isin(buffer.sample(rng, 1000), context).any()


def test_recent_fraction_draws_that_share_from_the_newest_chunk_and_nothing_else_changes(real_chunk):
    """`schedule.recent_fraction`: with three chunks, 0.25 of 64 draws is exactly 16 from the third
    (the newest) chunk, the other 48 uniform over all three; at 0, and with one chunk, the draws are the
    uniform ones the buffer made before the option existed. Mutations caught: the newest chunk's
    boundary taken from the first chunk (`_chunk_ends[0]`), the fraction ignored or applied to
    the whole batch, the default path drawing a different stream (runs would not reproduce)."""
    cfg, chunk, _ = real_chunk
    buffer = ReplayBuffer(cfg.env.frame_stack)
    buffer.add_chunk(chunk)
    starts = buffer.sequence_starts(cfg.dynamics.seq_len)
    one = buffer.sample_starts(starts, 64, np.random.default_rng(0), 0.5)
    np.testing.assert_array_equal(one, np.random.default_rng(0).choice(starts, 64))  # one chunk: uniform
    buffer.add_chunk(chunk)
    buffer.add_chunk(chunk)
    starts, boundary = buffer.sequence_starts(cfg.dynamics.seq_len), 2 * len(chunk["actions"])
    np.testing.assert_array_equal(buffer.sample_starts(starts, 64, np.random.default_rng(1)),
                                  np.random.default_rng(1).choice(starts, 64))
    np.testing.assert_array_equal(buffer.sample(np.random.default_rng(1), 64),
                                  np.random.default_rng(1).choice(buffer.sample_idx, 64))
    drawn = np.concatenate([buffer.sample_starts(starts, 64, np.random.default_rng(s), 0.25) for s in range(50)])
    assert np.isin(drawn, starts).all()
    per_batch_recent = (drawn.reshape(50, 64) >= boundary).sum(1)
    assert (drawn.reshape(50, 64)[:, :16] >= boundary).all()  # the newest chunk's share
    # The rest uniform over three chunks of equal size: about a third of the 48 from the newest.
    assert 16 + 12 < per_batch_recent.mean() < 16 + 20
