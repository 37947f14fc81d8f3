"""The model registry: every architecture builds by name, unknown names are refused, local
pretrained weights load, and the temporal network is causal and learns."""

from __future__ import annotations

import pytest
import torch

from surgflow.errors import ConfigError, UnknownName
from surgflow.training.models import (
    CLIP_ARCHITECTURES,
    MSTCN,
    architectures,
    build_clip_model,
    temporal_loss,
)

# Smallest input each architecture accepts (T, H·W), to keep the CPU suite fast.
SMALL = {"s3d": (13, 224), "mvit_v2_s": (16, 224)}
# These two only accept full-size input and take 5-20 s each on one CPU core.
HEAVY = {"s3d", "mvit_v2_s"}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in sorted(CLIP_ARCHITECTURES)
])
def test_every_architecture_builds_and_gives_features_and_logits(name):
    torch.manual_seed(0)
    model = build_clip_model(name, num_classes=7).eval()
    t, s = SMALL.get(name, (2 if CLIP_ARCHITECTURES[name].kind == "video" else 1, 32))
    x = torch.randn(2, 3, t, s, s)
    with torch.no_grad():
        feats = model.features(x)
        logits = model(x)
    assert feats.shape == (2, CLIP_ARCHITECTURES[name].feature_dim)
    assert logits.shape == (2, 7)


def test_unknown_architecture_is_refused_with_the_known_list():
    with pytest.raises(UnknownName) as e:
        build_clip_model("vgg11", 7)
    assert "vgg11" in str(e.value) and "resnet18" in str(e.value) and "r3d_18" in str(e.value)


def test_registry_lists_clip_and_temporal_architectures():
    rows = {r["name"]: r for r in architectures()}
    assert {"r3d_18", "mc3_18", "r2plus1d_18", "s3d", "mvit_v2_s", "resnet18", "resnet50",
            "efficientnet_b0", "convnext_tiny", "mobilenet_v3_large", "tiny2d",
            "mstcn"} <= set(rows)
    assert rows["mstcn"]["stage"] == "temporal" and rows["resnet50"]["feature_dim"] == 2048


def test_local_pretrained_weights_are_loaded_and_the_head_replaced(tmp_path):
    import torchvision

    torch.manual_seed(1)
    donor = torchvision.models.resnet18(weights=None)  # 1000-class head, like published weights
    path = tmp_path / "resnet18.pt"
    torch.save(donor.state_dict(), path)
    model = build_clip_model("resnet18", 7, pretrained=path)
    assert torch.equal(model.backbone.conv1.weight, donor.conv1.weight)
    assert model.head.out_features == 7
    fresh = build_clip_model("resnet18", 7)
    assert not torch.equal(fresh.backbone.conv1.weight, donor.conv1.weight)


def test_wrong_or_missing_weights_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_clip_model("resnet18", 7, pretrained=tmp_path / "none.pt")
    other = tmp_path / "tiny.pt"
    torch.save(build_clip_model("tiny2d", 7).state_dict(), other)
    with pytest.raises(ConfigError, match=r"matches only \d+ of \d+ tensors of architecture"):
        build_clip_model("resnet18", 7, pretrained=other)


def test_causal_temporal_network_never_looks_ahead():
    torch.manual_seed(0)
    net = MSTCN(16, 5, stages=3, layers=5, channels=8, dropout=0.0, causal=True).eval()
    x = torch.randn(1, 16, 60)
    y = x.clone()
    y[:, :, 40:] = torch.randn(1, 16, 20)  # change only the future after second 40
    with torch.no_grad():
        a, b = net(x), net(y)
    assert a.shape == (3, 1, 5, 60)
    assert torch.allclose(a[..., :40], b[..., :40], atol=1e-6)
    assert not torch.allclose(a[..., 40:], b[..., 40:])
    acausal = MSTCN(16, 5, stages=1, layers=5, channels=8, dropout=0.0, causal=False).eval()
    with torch.no_grad():
        assert not torch.allclose(acausal(x)[..., :40], acausal(y)[..., :40])


def test_temporal_network_learns_phases_from_features():
    torch.manual_seed(0)
    labels = torch.arange(5).repeat_interleave(12).unsqueeze(0)  # 5 phases of 12 s
    feats = torch.nn.functional.one_hot(labels, 5).float().transpose(1, 2) * 2
    feats = feats + 0.5 * torch.randn(1, 5, 60)
    net = MSTCN(5, 5, stages=2, layers=3, channels=8, dropout=0.0)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    first = None
    for _ in range(100):
        loss = temporal_loss(net(feats), labels)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 3
    acc = (net(feats)[-1].argmax(1) == labels).float().mean().item()
    assert acc > 0.9


def test_temporal_loss_ignores_unlabelled_and_padded_seconds():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 4, 12)  # 2 stages, 2 videos, 4 classes, 12 s
    target = torch.full((2, 12), -1)
    target[0, :5] = 1  # video 0: 5 labelled seconds, then unlabelled
    target[1, 3:9] = 2  # video 1: unlabelled, labelled, then padding
    keep = target >= 0
    changed = logits.clone()
    per_second = changed.permute(0, 1, 3, 2)  # S×B×L×C view of the same storage
    per_second[:, ~keep] = 10 * torch.randn(2, int((~keep).sum()), 4)
    loss = temporal_loss(logits, target)
    assert torch.isfinite(loss)
    # what the network outputs at seconds without a label does not matter, smoothing included
    torch.testing.assert_close(temporal_loss(changed, target), loss)
    # ...while a change at a labelled second does
    bumped = logits.clone()
    bumped[:, 0, 1, 2] += 3.0  # one class at labelled second 2 of video 0
    assert not torch.allclose(temporal_loss(bumped, target), loss)
    # smoothing counts only pairs of labelled seconds: a sequence labelled at one second alone
    # has no smoothing term at all, however jumpy the logits
    lone = torch.full((1, 12), -1)
    lone[0, 4] = 0
    jumpy = torch.randn(1, 1, 4, 12) * 10
    ce = torch.nn.functional.cross_entropy(jumpy[0], lone, ignore_index=-1)
    torch.testing.assert_close(temporal_loss(jumpy, lone), ce)


def test_a_refining_temporal_network_starts_as_its_encoder_and_learns_corrections():
    from surgflow.training.chain import HeadOverTime

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 5)
    net = MSTCN(16, 5, stages=3, layers=4, channels=8, dropout=0.0, refine=True)
    net.set_prior(head)
    x = torch.randn(2, 16, 30)
    with torch.no_grad():
        encoder = HeadOverTime(head)(x)[0]
        out = net(x)
    assert out.shape == (3, 2, 5, 30)
    for stage in out:  # every stage, untrained, is exactly the encoder's own prediction
        torch.testing.assert_close(stage, encoder)
    labels = torch.arange(5).repeat_interleave(6).unsqueeze(0).expand(2, -1)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=0.02)
    for _ in range(60):
        loss = temporal_loss(net(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.testing.assert_close(net.prior.weight[..., 0], head.weight)  # the prior stays frozen
    acc = (net(x)[-1].argmax(1) == labels).float().mean().item()
    assert acc > (encoder.argmax(1) == labels).float().mean().item() + 0.3
