"""The Atari environment matches the shards' preprocessing; `wm plan` plays real episodes next to a random policy."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from pipeline import cli
from pipeline.models.rssm import RSSMModule
from pipeline.plan.env import AtariEnv, AtariSettings
from pipeline.plan.episodes import read_episodes


def _server_module():
    spec = importlib.util.spec_from_file_location("llm_server", Path(__file__).with_name("test_llm_proposer.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["llm_server"] = module
    spec.loader.exec_module(module)
    return module


def test_env_replays_recorded_episodes_frame_for_frame(sample_corpus: Path) -> None:
    data = sample_corpus / "atari"
    settings = AtariSettings.from_dataset(data)
    assert settings == AtariSettings("breakout", 4, 64, False) and AtariSettings.action_count(data) == 4
    episodes, skipped = read_episodes(data, limit=2)
    assert skipped == 0 and len(episodes) == 2
    env = AtariEnv(settings, seed=123)
    assert env.meanings == ["NOOP", "FIRE", "RIGHT", "LEFT"]
    for ep in episodes:
        frame = env.reset()
        assert frame.shape == (3, 64, 64) and frame.dtype == torch.uint8
        errors, moved, shifted, total = [(frame.float() - ep.frames[0].float()).abs().mean()], 0, 0, 0.0
        for t in range(len(ep.frames) - 1):
            frame, reward, done = env.step(int(ep.actions[t]))
            total += reward
            errors.append((frame.float() - ep.frames[t + 1].float()).abs().mean())
            # pixels that differ a lot (ball, paddle): few against the true frame, many against its predecessor
            moved += int(((frame.int() - ep.frames[t + 1].int()).abs().sum(0) > 120).sum())
            shifted += int(((frame.int() - ep.frames[t].int()).abs().sum(0) > 120).sum())
        # same frames up to video-codec error; an off-by-one alignment would be far worse
        assert max(errors) < 4.0 and shifted > 3 * max(moved, 1)
        assert total == pytest.approx(float(ep.rewards[:-1].sum()))
    with pytest.raises(ValueError, match="outside"):
        env.step(4)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        AtariSettings.from_dataset(sample_corpus)
    with pytest.raises(ValueError, match="does not describe Atari"):
        AtariSettings.from_dataset(sample_corpus / "videos")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny RSSM saved in the layout of a Lightning checkpoint (state_dict, hyper_parameters, class path)."""
    torch.manual_seed(0)
    model = RSSMModule(action_dim=4, resolution=64, depth=8, deter=32, stoch=4, classes=4, hidden=32,
                       head_layers=1, context_frames=2)
    path = tmp_path_factory.mktemp("plan_ckpt") / "tiny.ckpt"
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


def test_wm_plan_online_reports_planner_and_random_over_seeded_episodes(checkpoint: Path, tmp_path: Path,
                                                                         sample_corpus: Path) -> None:
    out = tmp_path / "online.json"
    argv = ["plan", "--ckpt", str(checkpoint), "--data", str(sample_corpus / "atari"), "--episodes", "2",
            "--seed", "5", "--max-steps", "4", "--horizon", "3", "--replan-every", "2", "--population", "6",
            "--elites", "2", "--iterations", "2", "--noop-max", "5", "--json", str(out)]
    assert cli.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["mode"] == "online" and res["episodes"] == 2 and res["seed"] == 5
    assert res["env"] == {"game": "breakout", "frameskip": 4, "size": 64, "actions": ["NOOP", "FIRE", "RIGHT", "LEFT"]}
    assert res["noop_max"] == 5 and res["max_steps"] == 4
    for who in ("planner", "random"):
        assert len(res[who]["returns"]) == 2 and res[who]["mean"] == pytest.approx(sum(res[who]["returns"]) / 2)
    # seeded: a second run gives the same numbers
    assert cli.main(argv) == 0
    again = json.loads(out.read_text())
    assert again["planner"]["returns"] == res["planner"]["returns"]
    assert again["random"]["returns"] == res["random"]["returns"]


def test_wm_plan_with_language_model_proposals(checkpoint: Path, tmp_path: Path) -> None:
    srv = _server_module().ChatServer(content="PLAN: 1 2 3\nPLAN: FIRE FIRE\nPLAN: 0 0 0\nnonsense")
    srv.thread.start()
    try:
        out = tmp_path / "llm.json"
        rc = cli.main(["plan", "--ckpt", str(checkpoint), "--game", "breakout", "--episodes", "1", "--max-steps", "4",
                       "--horizon", "3", "--replan-every", "2", "--proposer", "llm", "--llm-url", srv.url,
                       "--llm-plans", "3", "--llm-timeout", "5", "--json", str(out)])
        assert rc == 0
        res = json.loads(out.read_text())
        assert res["llm"] == {"requests": 2, "failed_requests": 0, "plans": 4, "rejected": 2, "fallbacks": 0}
        assert len(srv.requests) == 2
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()


def test_wm_plan_bad_inputs_fail_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", "--ckpt", str(tmp_path / "missing.ckpt")]) == 2
    assert "not found" in capsys.readouterr().err
    bogus = tmp_path / "bogus.ckpt"
    torch.save({"state_dict": {}}, bogus)
    assert cli.main(["plan", "--ckpt", str(bogus)]) == 2
    assert "wm_class_path" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["plan", "--ckpt", str(bogus), "--offline"])
    assert "--offline needs --data" in capsys.readouterr().err
