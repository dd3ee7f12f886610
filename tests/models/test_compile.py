"""`--compile blocks`: every transformer block compiles without a graph break and computes what eager computes."""

from __future__ import annotations

import torch

from pipeline.models.compile import blocks_of, compile_model, compile_targets, is_compiled, reset
from pipeline.nn.vit import VideoViT


def test_vit_blocks_have_no_graph_break_and_match_eager_through_inductor() -> None:
    reset()
    torch.manual_seed(0)
    vit = VideoViT(dim=32, depth=2, heads=4, patch_size=8, tubelet_size=2)
    x = torch.rand(2, 3, 8, 32, 32)
    block, tokens = vit.blocks[0], torch.randn(2, 16, 32)
    explained = torch._dynamo.explain(block)(tokens)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    reference = vit(x)
    assert compile_model(vit, "blocks") == list(vit.blocks) and is_compiled(vit)
    out = vit(x)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    out.sum().backward()  # the compiled backward runs too
    assert all(p.grad is not None for p in vit.blocks.parameters())


def test_compile_targets_fall_back_to_child_modules() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    assert blocks_of(net) == [] and compile_targets(net, "blocks") == [net[0], net[2]]
    assert compile_targets(net, "off") == []


def test_activation_checkpointing_recomputes_blocks_with_the_same_gradients() -> None:
    from pipeline.models.memory import checkpoint_activations

    torch.manual_seed(0)
    vit = VideoViT(dim=32, depth=2, heads=4, patch_size=8, tubelet_size=2)
    x = torch.rand(2, 3, 8, 32, 32)
    vit(x).square().mean().backward()
    reference = {n: p.grad.clone() for n, p in vit.named_parameters()}
    keys = list(vit.state_dict())
    vit.zero_grad()
    calls = []
    forward = vit.blocks[0].forward

    def counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    vit.blocks[0].forward = counted
    assert checkpoint_activations(vit) == list(vit.blocks)
    vit(x).square().mean().backward()
    assert len(calls) == 2  # the forward, and its recomputation in the backward
    assert list(vit.state_dict()) == keys  # checkpoints do not change
    for name, p in vit.named_parameters():
        torch.testing.assert_close(p.grad, reference[name], rtol=1e-5, atol=1e-6, msg=name)
    with torch.no_grad():
        calls.clear()
        vit(x)
        assert len(calls) == 1
