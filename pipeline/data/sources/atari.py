"""Atari episodes played with ale-py (the ROMs ship in the package) as samples of the shard format.

Per episode: `KEY.mp4` (one frame per agent step: the last emulator frame of each frameskip group),
`KEY.actions.npy` `[T] int64` (index into the action set, the action taken after frame t),
`KEY.rewards.npy` `[T] float32` (reward summed over that step's frameskip group),
`KEY.terminals.npy` `[T] uint8` (1 where the game ended after that step), and `KEY.json`.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.manifest import Manifest
from pipeline.data.shards import Sample, ShardWriter
from pipeline.data.sources.encode import encode_frames

ATARI_FPS = 60.0
POLICIES = ("random", "sticky")


@dataclass(frozen=True)
class AtariConfig:
    """How episodes are played and recorded."""

    game: str = "breakout"
    """ALE ROM id (`ale_py.roms.get_all_rom_ids()`), e.g. breakout, pong."""
    seed: int = 0
    """base seed; episode i is played with the seed pair (seed, i), independent of the others."""
    policy: str = "random"
    """random: uniform action each step; sticky: repeat the previous action with probability `sticky`."""
    sticky: float = 0.25
    """probability of repeating the previous action under the sticky policy."""
    frameskip: int = 4
    """emulator frames per agent step (the action is repeated, the last frame recorded)."""
    max_frames: int = 256
    """recorded frames per episode at most; a longer game is cut (truncated, terminal stays 0)."""
    size: int = 64
    """frames are resized to size x size RGB."""
    full_action_space: bool = False
    """use all 18 ALE actions instead of the game's minimal set."""
    crf: int = 10
    """x264 quality; low because the frames are small and sharp-edged."""

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if not 0.0 <= self.sticky <= 1.0:
            raise ValueError(f"sticky must be in [0, 1], got {self.sticky}")
        if self.frameskip < 1 or self.max_frames < 1:
            raise ValueError("frameskip and max_frames must be >= 1")
        if self.size < 2 or self.size % 2:
            raise ValueError(f"size must be even and >= 2 (yuv420p), got {self.size}")


def check_game(game: str) -> str:
    """The ROM path of `game`; raises ValueError naming close matches when the game is unknown."""
    from ale_py import roms

    known = roms.get_all_rom_ids()
    if game not in known:
        close = difflib.get_close_matches(game, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known games include {', '.join(known[:8])}"
        raise ValueError(f"unknown Atari game {game!r}{hint}")
    return str(roms.get_rom_path(game))


@functools.lru_cache(maxsize=4)
def _emulator(game: str) -> Any:
    """One emulator per game and process: loading a ROM costs far more than playing a short episode."""
    from ale_py import ALEInterface, LoggerMode

    ALEInterface.setLoggerMode(LoggerMode.Error)
    ale = ALEInterface()
    # With emulator stickiness off the emulator is deterministic: its seed changes nothing, and every
    # reset_game() starts from the same state whatever was played before (checked for several games),
    # so all randomness comes from the policy's seeded generator.
    ale.setInt("random_seed", 0)
    # The policy does its own stickiness, so the recorded action is the one the emulator executed.
    ale.setFloat("repeat_action_probability", 0.0)
    ale.loadROM(check_game(game))
    return ale


def _resize(frame: np.ndarray, size: int) -> np.ndarray:
    """`[210, 160, 3] uint8 -> [size, size, 3] uint8` with area averaging (PIL box filter)."""
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.BOX))


def play_episode(config: AtariConfig, episode: int) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """Play one seeded episode: frames `[T, S, S, 3] uint8`, the per-frame arrays, and json metadata."""
    rng = np.random.default_rng([config.seed, episode])
    ale = _emulator(config.game)
    ale.reset_game()
    action_set = ale.getLegalActionSet() if config.full_action_space else ale.getMinimalActionSet()
    frames, actions, rewards, terminals = [], [], [], []
    previous = int(rng.integers(len(action_set)))
    while len(frames) < config.max_frames and not ale.game_over():
        frames.append(_resize(ale.getScreenRGB(), config.size))
        repeat = config.policy == "sticky" and rng.random() < config.sticky
        action = previous if repeat else int(rng.integers(len(action_set)))
        reward = 0.0
        for _ in range(config.frameskip):
            reward += ale.act(action_set[action])
            if ale.game_over():
                break
        actions.append(action)
        rewards.append(reward)
        terminals.append(ale.game_over())
        previous = action
    arrays = {"actions": np.asarray(actions, np.int64), "rewards": np.asarray(rewards, np.float32),
              "terminals": np.asarray(terminals, np.uint8)}
    meta = {"game": config.game, "seed": config.seed, "episode": episode, "policy": config.policy,
            "sticky": config.sticky if config.policy == "sticky" else 0.0, "frameskip": config.frameskip,
            "truncated": not bool(terminals[-1]), "return": float(np.sum(rewards)),
            "action_space": action_space(ale, action_set)}
    return np.stack(frames), arrays, meta


def action_space(ale: Any, action_set: Any) -> dict[str, Any]:
    """`{"type": "discrete", "n": N, "meanings": [...]}` for the action set in use."""
    return {"type": "discrete", "n": len(action_set), "meanings": [a.name for a in action_set]}


def episode_sample(config: AtariConfig, episode: int) -> Sample:
    """One episode as a shard-format sample (key GAME-sSEED-eEPISODE)."""
    frames, arrays, meta = play_episode(config, episode)
    fps = ATARI_FPS / config.frameskip
    num_frames, height, width = frames.shape[:3]
    mp4 = encode_frames(frames, fps, crf=config.crf)
    meta.update({"fps": fps, "num_frames": int(num_frames), "width": int(width), "height": int(height),
                 "source": f"ale:{config.game}", "span": [0.0, num_frames / fps]})
    return Sample(key=f"{config.game}-s{config.seed}-e{episode:06d}", mp4=mp4, meta=meta, arrays=arrays)


def write_atari_dataset(out: str | Path, config: AtariConfig, episodes: int, shard_size: int = 64,
                        prefix: str = "atari", overwrite: bool = False, created_by: str = "",
                        progress: bool | None = None) -> Manifest:
    """Play `episodes` seeded episodes and write them as shards + manifest into `out`."""
    from tqdm import tqdm

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    check_game(config.game)
    info: dict[str, Any] = {"kind": "atari", "source": f"ale:{config.game}", "resolution": config.size,
                            "fps": ATARI_FPS / config.frameskip, "config": asdict(config), "created_by": created_by}
    frames = 0
    with ShardWriter(out, shard_size=shard_size, prefix=prefix, info=info, overwrite=overwrite) as writer:
        for episode in tqdm(range(episodes), desc=config.game, unit="episode",
                            disable=None if progress is None else not progress):
            sample = episode_sample(config, episode)
            writer.write(sample)
            frames += sample.meta["num_frames"]
            writer.info["action_space"] = sample.meta["action_space"]
        writer.stats.update({"episodes": episodes, "frames": frames})
    return writer.close()
