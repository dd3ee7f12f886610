"""An Atari environment (ale-py) with exactly the preprocessing of the Atari shards.

Settings (game, frameskip, frame size, action set) are read from a shard dataset's manifest.json, so a
model trained on those shards sees the same frames and actions when it plans in the real game.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class AtariSettings:
    """How frames and actions map between the emulator and the model."""

    game: str = "breakout"
    """ALE ROM id."""
    frameskip: int = 4
    """emulator frames per agent step (action repeated, rewards summed, last frame kept)."""
    size: int = 64
    """frames resized to size x size RGB with a box filter, as in the shards."""
    full_action_space: bool = False
    """all 18 ALE actions instead of the game's minimal set."""

    @staticmethod
    def _info(directory: str | Path) -> dict[str, Any]:
        path = Path(directory) / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(f"no manifest.json in {directory}: pass the directory of Atari shards "
                                    "written by `wm shards atari`")
        info = json.loads(path.read_text()).get("info", {})
        if info.get("kind") != "atari" or not isinstance(info.get("config"), dict):
            raise ValueError(f"{path} does not describe Atari shards (info.kind={info.get('kind')!r})")
        return info

    @classmethod
    def from_dataset(cls, directory: str | Path) -> AtariSettings:
        """Read the settings an Atari shard dataset was recorded with (its manifest.json)."""
        config = cls._info(directory)["config"]
        return cls(game=str(config["game"]), frameskip=int(config["frameskip"]), size=int(config["size"]),
                   full_action_space=bool(config.get("full_action_space", False)))

    @classmethod
    def action_count(cls, directory: str | Path) -> int:
        """n of the dataset's discrete action space (manifest info.action_space)."""
        space = cls._info(directory).get("action_space", {})
        if space.get("type") != "discrete" or int(space.get("n", 0)) < 1:
            raise ValueError(f"{directory}: manifest has no discrete action_space")
        return int(space["n"])


def resize_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """[210, 160, 3] uint8 -> [size, size, 3] uint8 with a box filter (area average), as the shard writer."""
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.BOX))


class AtariEnv:
    """reset() -> frame uint8 [3, S, S]; step(action index) -> (frame, reward, done)."""

    def __init__(self, settings: AtariSettings, seed: int = 0, noop_max: int = 0) -> None:
        from ale_py import ALEInterface, LoggerMode

        from pipeline.data.sources.atari import check_game

        ALEInterface.setLoggerMode(LoggerMode.Error)
        self.settings, self.noop_max = settings, noop_max
        self.ale = ALEInterface()
        self.ale.setInt("random_seed", int(seed))
        # the shards were recorded without emulator stickiness; the recorded action is the executed one
        self.ale.setFloat("repeat_action_probability", 0.0)
        self.ale.loadROM(check_game(settings.game))
        self.action_set = (self.ale.getLegalActionSet() if settings.full_action_space
                           else self.ale.getMinimalActionSet())
        self.meanings = [a.name for a in self.action_set]

    @property
    def num_actions(self) -> int:
        return len(self.action_set)

    def _frame(self) -> Tensor:
        return torch.from_numpy(resize_frame(self.ale.getScreenRGB(), self.settings.size).copy()).permute(2, 0, 1)

    def reset(self, seed: int | None = None) -> Tensor:
        """Start a new game; with noop_max > 0, a number of no-op steps drawn from `seed` first (no-op starts),
        so that seeded episodes of the deterministic emulator begin in different states."""
        self.ale.reset_game()
        if self.noop_max > 0:
            rng = torch.Generator().manual_seed(0 if seed is None else int(seed))
            for _ in range(int(torch.randint(self.noop_max + 1, (1,), generator=rng))):
                self.step(self.meanings.index("NOOP") if "NOOP" in self.meanings else 0)
        return self._frame()

    def step(self, action: int) -> tuple[Tensor, float, bool]:
        if not 0 <= action < self.num_actions:
            raise ValueError(f"action {action} outside [0, {self.num_actions})")
        reward = 0.0
        for _ in range(self.settings.frameskip):
            reward += self.ale.act(self.action_set[action])
            if self.ale.game_over():
                break
        return self._frame(), float(reward), bool(self.ale.game_over())

    def describe(self) -> dict[str, Any]:
        return {"game": self.settings.game, "frameskip": self.settings.frameskip, "size": self.settings.size,
                "actions": self.meanings}
