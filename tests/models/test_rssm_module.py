from __future__ import annotations

import math

import pytest
import torch

from pipeline.models.protocol import LatentWorldModel, WorldModel
from pipeline.models.rssm import RSSMModule

TINY = dict(action_dim=3, resolution=32, depth=8, deter=32, stoch=4, classes=4, hidden=32, head_layers=1,
            context_frames=3)


def _batch(B: int = 2, T: int = 6, A: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"video": torch.randint(0, 256, (B, T, 3, 32, 32), dtype=torch.uint8, generator=g),
            "actions": torch.eye(A)[torch.randint(0, A, (B, T), generator=g)],
            "rewards": torch.tensor([[0.0, 1.0, 0.0, 0.0, 4.0, 0.0]] * B)[:, :T],
            "terminals": torch.zeros(B, T)}


def test_rollout_contract_shapes_and_action_alignment() -> None:
    torch.manual_seed(0)
    model = RSSMModule(**TINY).eval()
    assert isinstance(model, WorldModel) and isinstance(model, LatentWorldModel)
    b = _batch()
    ctx, fut = b["video"][:, :3], b["video"][:, 3:]
    r = model.rollout(ctx, b["actions"], 3, future=fut)
    F = 32 + 4 * 4
    assert r.frames.shape == (2, 3, 3, 32, 32) and 0 <= r.frames.min() and r.frames.max() <= 1
    assert r.latents.shape == (2, 3, F) and r.target_latents.shape == (2, 3, F) and r.rewards.shape == (2, 3)
    assert r.horizon == 3
    # zero-initialised reward head: exactly 0 predicted reward before training
    assert r.rewards.abs().max() < 1e-6
    # the future is only embedded, never used to predict
    r2 = model.rollout(ctx, b["actions"], 3)
    torch.testing.assert_close(r.frames, r2.frames)
    assert r2.target_latents is None
    # row Tc-1 leads to the first predicted frame; the last row (after the last prediction) is unused
    acts = b["actions"].clone()
    acts[:, -1] = acts[:, -1].roll(1, -1)
    torch.testing.assert_close(model.rollout(ctx, acts, 3).latents, r2.latents)
    acts[:, 2] = acts[:, 2].roll(1, -1)
    assert not torch.allclose(model.rollout(ctx, acts, 3).latents[:, 0], r2.latents[:, 0])
    assert model.embed(b["video"][:, :1]).shape == (2, 1, F)
    with pytest.raises(ValueError, match="pass actions"):
        model.rollout(ctx, None, 3)
    with pytest.raises(ValueError, match="do not match"):
        model.rollout(ctx, b["actions"][..., :2], 3)


def test_loss_terms_at_initialisation_and_gradients() -> None:
    torch.manual_seed(0)
    model = RSSMModule(**TINY)
    out = model.loss(_batch())
    assert set(out) == {"loss", "recon", "kl", "kl_dyn", "kl_rep", "reward", "continue"}
    # zero logits: the two-hot cross-entropy is log(255) whatever the target
    assert out["reward"].item() == pytest.approx(math.log(255), rel=1e-5)
    # free bits: each KL term counts at least 1 nat, weighted 0.5 + 0.1
    assert out["kl"].item() >= 0.6 - 1e-6
    total = out["recon"] + out["kl"] + out["reward"] + out["continue"]
    assert out["loss"].item() == pytest.approx(total.item(), rel=1e-6)
    out["loss"].backward()
    for name in ("encoder", "core", "decoder", "reward_head", "continue_head"):
        grads = [p.grad for p in getattr(model, name).parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name


def test_reward_and_continue_targets_are_shifted_to_the_state_they_lead_to() -> None:
    torch.manual_seed(0)
    model = RSSMModule(**TINY)
    with torch.no_grad():
        model.reward_head[-1].bias.copy_(torch.linspace(-3, 3, 255))  # non-uniform so targets matter
    b = _batch(T=6)

    def terms(batch: dict[str, torch.Tensor]) -> tuple[float, float]:
        torch.manual_seed(1)
        out = model.loss(batch)
        return out["reward"].item(), out["continue"].item()

    base = terms(b)
    # the last row is the step after the last frame: no state of the clip is reached by it
    last = {**b, "rewards": b["rewards"].clone(), "terminals": b["terminals"].clone()}
    last["rewards"][:, -1] = 100.0
    last["terminals"][:, -1] = 1.0
    assert terms(last) == pytest.approx(base)
    # the first row (step after frame 0, reaching state 1) is a target
    first = {**b, "rewards": b["rewards"].clone(), "terminals": b["terminals"].clone()}
    first["rewards"][:, 0] = 100.0
    first["terminals"][:, 0] = 1.0
    r, c = terms(first)
    assert r != pytest.approx(base[0]) and c != pytest.approx(base[1])


def test_imagination_with_policy_and_lambda_returns() -> None:
    torch.manual_seed(0)
    model = RSSMModule(**TINY).eval()
    b = _batch()
    post, _ = model.observe(b["video"], b["actions"], sample=False)
    from pipeline.nn.rssm import last_state

    policy_calls = []

    def policy(feat: torch.Tensor) -> torch.Tensor:
        policy_calls.append(feat.shape)
        return torch.eye(3)[feat[:, 0].gt(0).long()]

    imag = model.imagine(last_state(post), model.hparams.imag_horizon, policy=policy)
    H = 15
    assert imag.features.shape == (2, H, 48) and imag.rewards.shape == (2, H) and imag.continues.shape == (2, H)
    assert imag.actions.shape == (2, H, 3) and len(policy_calls) == H and policy_calls[0] == (2, 48)
    assert ((imag.continues > 0) & (imag.continues < 1)).all()
    returns = model.imagined_returns(imag, torch.ones(2, H + 1))
    assert returns.shape == (2, H)
    with pytest.raises(ValueError, match="exactly one"):
        model.imagine(last_state(post), 3)


@pytest.mark.parametrize("name", ["tiny", "atari"])
def test_rssm_configs_build_the_real_classes(name: str) -> None:
    import inspect
    from pathlib import Path

    import yaml

    from pipeline.data.datamodule import ShardDataModule

    cfg = yaml.safe_load((Path(__file__).parents[2] / "configs" / "rssm" / f"{name}.yaml").read_text())
    assert cfg["model"]["class_path"] == "pipeline.models.rssm.RSSMModule"
    model = RSSMModule(**cfg["model"]["init_args"])
    args = cfg["model"]["init_args"]
    assert (model.core.stoch, model.core.classes, model.core.deter) == (args["stoch"], args["classes"], args["deter"])
    data_args = set(inspect.signature(ShardDataModule.__init__).parameters)
    assert set(cfg["data"]["init_args"]) <= data_args
    assert cfg["data"]["init_args"]["resolution"] == model.hparams.resolution
    with pytest.raises(TypeError):
        RSSMModule(**cfg["model"]["init_args"], no_such_key=1)
