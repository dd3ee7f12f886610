"""Atari source: real ale-py Breakout episodes, seeded policies, frameskip, per-frame arrays."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.data.manifest import read_manifest, verify_dataset
from pipeline.data.sources.atari import AtariConfig, check_game, episode_sample, play_episode, write_atari_dataset


def test_episode_arrays_frames_and_metadata() -> None:
    config = AtariConfig(game="breakout", seed=3, max_frames=24, size=32)
    frames, arrays, meta = play_episode(config, episode=0)
    assert frames.shape == (24, 32, 32, 3) and frames.dtype == np.uint8
    assert arrays["actions"].dtype == np.int64 and arrays["actions"].shape == (24,)
    assert arrays["rewards"].dtype == np.float32 and arrays["terminals"].dtype == np.uint8
    assert set(np.unique(arrays["actions"])) <= {0, 1, 2, 3}
    assert meta["action_space"] == {"type": "discrete", "n": 4, "meanings": ["NOOP", "FIRE", "RIGHT", "LEFT"]}
    assert meta["truncated"] is True and arrays["terminals"].sum() == 0  # cut at max_frames, not ended
    assert frames.std() > 0  # a real screen, not a blank


def test_seeded_episodes_are_reproducible_and_differ_across_seeds() -> None:
    config = AtariConfig(seed=7, max_frames=16, size=32)
    a = play_episode(config, 2)
    other = play_episode(AtariConfig(seed=8, max_frames=40, size=32), 2)  # the emulator is reused in between
    b = play_episode(config, 2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1]["actions"], b[1]["actions"])
    assert not np.array_equal(a[1]["actions"], other[1]["actions"][:16])


def test_sticky_policy_repeats_the_previous_action() -> None:
    def repeat_rate(policy: str, sticky: float) -> float:
        _, arrays, _ = play_episode(AtariConfig(policy=policy, sticky=sticky, max_frames=100, size=16, seed=1), 0)
        actions = arrays["actions"]
        return float(np.mean(actions[1:] == actions[:-1]))

    # Uniform over 4 actions repeats with p=0.25; sticky 0.8 repeats with 0.8 + 0.2 * 0.25 = 0.85.
    assert repeat_rate("random", 0.8) < 0.4
    assert repeat_rate("sticky", 0.8) > 0.75


def test_episode_runs_to_game_over_with_terminal_last() -> None:
    # A random Breakout player loses its 5 lives in a few hundred agent steps at frameskip 8.
    frames, arrays, meta = play_episode(AtariConfig(frameskip=8, max_frames=5000, size=16, seed=0), 0)
    assert meta["truncated"] is False
    assert arrays["terminals"][-1] == 1 and arrays["terminals"][:-1].sum() == 0
    assert len(frames) == len(arrays["actions"]) == len(arrays["rewards"]) < 5000


def test_frameskip_sets_the_recorded_fps_and_mp4_matches() -> None:
    sample = episode_sample(AtariConfig(frameskip=4, max_frames=12, size=32), 0)
    assert sample.meta["fps"] == 15.0 and sample.meta["num_frames"] == 12
    assert sample.key == "breakout-s0-e000000"
    with av.open(io.BytesIO(sample.mp4)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert float(container.streams.video[0].average_rate) == 15.0
    assert len(frames) == 12 and frames[0].shape == (32, 32, 3)
    # Low crf: the decoded frames stay close to the emulator's (beyond chroma subsampling).
    original, _, _ = play_episode(AtariConfig(frameskip=4, max_frames=12, size=32), 0)
    error = np.abs(np.stack(frames).astype(np.float32) - original.astype(np.float32)).mean()
    assert error < 12.0


def test_unknown_game_and_bad_config_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown Atari game 'breakot'; did you mean breakout"):
        check_game("breakot")
    with pytest.raises(ValueError, match="policy must be one of"):
        AtariConfig(policy="greedy")
    with pytest.raises(ValueError, match="even"):
        AtariConfig(size=63)


def test_write_atari_dataset(tmp_path: Path) -> None:
    config = AtariConfig(game="pong", seed=0, max_frames=8, size=32, policy="sticky")
    manifest = write_atari_dataset(tmp_path / "pong", config, episodes=3, shard_size=2, created_by="test",
                                   progress=False)
    assert [e.samples for e in manifest.shards] == [2, 1]
    assert verify_dataset(tmp_path / "pong") == []
    info = read_manifest(tmp_path / "pong").info
    assert info["action_space"]["n"] == 6 and info["fps"] == 15.0 and info["source"] == "ale:pong"
    assert info["config"]["policy"] == "sticky" and info["created_by"] == "test"
    with tarfile.open(tmp_path / "pong" / "atari-000000.tar") as tar:
        names = tar.getnames()
        actions = np.load(io.BytesIO(tar.extractfile("pong-s0-e000001.actions.npy").read()), allow_pickle=False)
    assert names[:5] == [f"pong-s0-e000000.{ext}" for ext in
                         ("actions.npy", "json", "mp4", "rewards.npy", "terminals.npy")]
    assert actions.shape == (8,) and actions.dtype == np.int64 and actions.max() < 6
