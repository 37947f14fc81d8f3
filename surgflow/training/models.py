"""Model architectures picked by name: clip/frame models (stage 1) and the temporal network.

Every stage-1 model is a :class:`ClipModel`: input ``B×C×T×H×W`` floats, ``features(x)`` gives
``B×D`` and ``forward(x)`` gives class logits. Frame encoders (2D image models) run on each of the
``T`` frames and average their features; video models (3D) take the clip whole. torchvision
models are built with ``weights=None``; a recipe may name a local weights file, and nothing is
ever downloaded.

The temporal network (:class:`MSTCN`) follows MS-TCN/TeCNO: stages of dilated residual 1D
convolutions over a video's per-second feature sequence, each stage refining the previous
stage's class probabilities; with ``causal=True`` a prediction at second ``t`` sees only seconds
``≤ t``, so it can run online during surgery.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from surgflow.errors import ConfigError, UnknownName


@dataclass(frozen=True)
class Architecture:
    """A stage-1 architecture in the registry."""

    name: str
    kind: str  # "frame" (2D encoder per frame) or "video" (3D clip model)
    feature_dim: int
    description: str
    fixed_frames: int | None = None
    fixed_size: int | None = None
    min_frames: int = 1
    min_size: int = 16


def _tv(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision.models as tvm
        import torchvision.models.video as tvv

        module = tvv if hasattr(tvv, name) else tvm
        return getattr(module, name)(weights=None)

    return build


CLIP_ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in [
        Architecture("tiny2d", "frame", 64, "small 2D CNN frame encoder for CPU tests and demos"),
        Architecture("tiny3d", "video", 64, "small 3D CNN clip model for CPU tests and demos"),
        Architecture("resnet18", "frame", 512, "torchvision ResNet-18 frame encoder"),
        Architecture("resnet50", "frame", 2048, "torchvision ResNet-50 frame encoder"),
        Architecture("efficientnet_b0", "frame", 1280, "torchvision EfficientNet-B0 encoder"),
        Architecture("convnext_tiny", "frame", 768, "torchvision ConvNeXt-T frame encoder"),
        Architecture("mobilenet_v3_large", "frame", 1280, "torchvision MobileNetV3-L encoder"),
        Architecture("r3d_18", "video", 512, "torchvision R3D-18 3D ResNet clip model"),
        Architecture("mc3_18", "video", 512, "torchvision MC3-18 mixed-convolution clip model"),
        Architecture("r2plus1d_18", "video", 512, "torchvision R(2+1)D-18 clip model"),
        Architecture("s3d", "video", 1024, "torchvision S3D clip model", min_frames=13,
                     min_size=224),
        Architecture(
            "mvit_v2_s", "video", 768, "torchvision MViT-v2-S clip transformer",
            fixed_frames=16, fixed_size=224,
        ),
    ]
}
TEMPORAL_ARCHITECTURES = {"mstcn": "causal multi-stage temporal conv net over per-second features"}


def architectures() -> list[dict[str, Any]]:
    """The registry as plain data (for ``surgflow models architectures``)."""
    rows = [
        {"name": a.name, "stage": "clip", "kind": a.kind, "feature_dim": a.feature_dim,
         "fixed_frames": a.fixed_frames, "fixed_size": a.fixed_size, "min_frames": a.min_frames,
         "min_size": a.min_size, "description": a.description}
        for a in CLIP_ARCHITECTURES.values()
    ]
    rows += [
        {"name": n, "stage": "temporal", "kind": "temporal", "feature_dim": None,
         "fixed_frames": None, "fixed_size": None, "min_frames": None, "min_size": None,
         "description": d}
        for n, d in TEMPORAL_ARCHITECTURES.items()
    ]
    return rows


def get_architecture(name: str) -> Architecture:
    try:
        return CLIP_ARCHITECTURES[name]
    except KeyError:
        raise UnknownName("architecture", name, list(CLIP_ARCHITECTURES)) from None


class _Tiny2d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in [(3, 16), (16, 32), (32, 64)]:
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _Tiny3d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in [(3, 16), (16, 32), (32, 64)]:
            layers += [nn.Conv3d(cin, cout, 3, stride=(1, 2, 2), padding=1, bias=False),
                       nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool3d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _strip_head(name: str, m: nn.Module) -> nn.Module:
    """Replace a torchvision model's classifier by Identity so it returns features."""
    if name in ("resnet18", "resnet50", "r3d_18", "mc3_18", "r2plus1d_18"):
        m.fc = nn.Identity()
    elif name == "efficientnet_b0":
        m.classifier = nn.Identity()
    elif name == "convnext_tiny":
        m.classifier[2] = nn.Identity()
    elif name == "mobilenet_v3_large":
        m.classifier[3] = nn.Identity()
    elif name == "s3d":
        m.classifier = nn.Identity()
    elif name == "mvit_v2_s":
        m.head = nn.Identity()
    return m


def _load_pretrained(m: nn.Module, path: Path, arch: str) -> None:
    """Load a local torchvision-format state dict, skipping classifier weights that differ."""
    if not Path(path).is_file():
        raise ConfigError(f"model.pretrained: weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"model.pretrained: cannot read weights file {path}: {e}") from e
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    own = m.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(usable) < len(own) // 2:
        raise ConfigError(
            f"model.pretrained: {path} matches only {len(usable)} of {len(own)} tensors of "
            f"architecture {arch!r}; is it a {arch} state dict?"
        )
    m.load_state_dict(usable, strict=False)


class ClipModel(nn.Module):
    """A stage-1 model: backbone → features (B×D) → dropout → linear head (B×classes)."""

    def __init__(self, arch: Architecture, backbone: nn.Module, num_classes: int, dropout: float):
        super().__init__()
        self.arch_name, self.kind, self.feature_dim = arch.name, arch.kind, arch.feature_dim
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(arch.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "frame":
            b, c, t, h, w = x.shape
            frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
            return self.backbone(frames).reshape(b, t, -1).mean(dim=1)
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def build_clip_model(
    architecture: str, num_classes: int, *, pretrained: Path | None = None, dropout: float = 0.0
) -> ClipModel:
    """Build a stage-1 model by registry name; unknown names raise UnknownName."""
    arch = get_architecture(architecture)
    if arch.name == "tiny2d":
        backbone: nn.Module = _Tiny2d()
    elif arch.name == "tiny3d":
        backbone = _Tiny3d()
    else:
        backbone = _tv(arch.name)()
    if pretrained is not None:
        _load_pretrained(backbone, pretrained, arch.name)
    if arch.name not in ("tiny2d", "tiny3d"):
        backbone = _strip_head(arch.name, backbone)
    return ClipModel(arch, backbone, num_classes, dropout)


class _DilatedResidual(nn.Module):
    def __init__(self, dilation: int, channels: int, dropout: float, causal: bool):
        super().__init__()
        self.pad = (2 * dilation, 0) if causal else (dilation, dilation)
        self.conv = nn.Conv1d(channels, channels, 3, dilation=dilation)
        self.proj = nn.Conv1d(channels, channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(F.pad(x, self.pad)))
        return x + self.proj(self.dropout(h))


class _Stage(nn.Module):
    def __init__(self, in_dim: int, channels: int, layers: int, classes: int, dropout: float,
                 causal: bool):
        super().__init__()
        self.inp = nn.Conv1d(in_dim, channels, 1)
        self.layers = nn.Sequential(
            *[_DilatedResidual(2**i, channels, dropout, causal) for i in range(layers)]
        )
        self.out = nn.Conv1d(channels, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.layers(self.inp(x)))


class MSTCN(nn.Module):
    """Multi-stage temporal conv net: ``B×D×L`` features → ``S×B×classes×L`` logits per stage.

    With ``refine=True`` the network refines the encoder's own per-second predictions instead
    of predicting from scratch: ``prior`` holds a frozen copy of the encoder's linear head (as a
    1×1 convolution, set by :meth:`set_prior`), the first stage adds its output to the prior's
    logits and every later stage adds its output to the previous stage's logits. Those outputs
    start at zero, so before training the chain is exactly its encoder, and what the temporal
    stage learns is a correction. This matters because the network trains on the encoder's
    features of the encoder's own training videos, which the encoder fits better than it will
    fit new videos: a network predicting from scratch learns to trust those features more than
    they deserve and, on new videos, ends below the encoder alone.
    """

    def __init__(self, in_dim: int, num_classes: int, *, stages: int = 2, layers: int = 8,
                 channels: int = 64, dropout: float = 0.2, causal: bool = True,
                 refine: bool = False):
        super().__init__()
        self.in_dim, self.num_classes, self.causal, self.refine = in_dim, num_classes, causal, \
            refine
        self.stages = nn.ModuleList(
            [_Stage(in_dim, channels, layers, num_classes, dropout, causal)]
            + [_Stage(num_classes, channels, layers, num_classes, dropout, causal)
               for _ in range(stages - 1)]
        )
        if refine:
            self.prior = nn.Conv1d(in_dim, num_classes, 1)
            self.prior.requires_grad_(False)
            for stage in self.stages:
                nn.init.zeros_(stage.out.weight)
                nn.init.zeros_(stage.out.bias)

    @torch.no_grad()
    def set_prior(self, head: nn.Linear) -> None:
        """Start from the encoder's head (``refine`` networks only)."""
        self.prior.weight.copy_(head.weight.detach().unsqueeze(-1))
        self.prior.bias.copy_(head.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        out = self.stages[0](x)
        if self.refine:
            out = out + self.prior(x)
        outs.append(out)
        for stage in self.stages[1:]:
            step = stage(F.softmax(out, dim=1))
            out = out + step if self.refine else step
            outs.append(out)
        return torch.stack(outs)


def build_temporal_model(spec: Any, in_dim: int, num_classes: int) -> MSTCN:
    """Build the stage-2 network from a recipe's ``temporal`` section."""
    if spec.architecture not in TEMPORAL_ARCHITECTURES:
        raise UnknownName("temporal architecture", spec.architecture, list(TEMPORAL_ARCHITECTURES))
    return MSTCN(in_dim, num_classes, stages=spec.stages, layers=spec.layers,
                 channels=spec.channels, dropout=spec.dropout, causal=spec.causal,
                 refine=spec.refine_encoder)


def temporal_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 0.15) -> torch.Tensor:
    """MS-TCN loss: cross-entropy of every stage plus a truncated smoothing term.

    ``logits`` is ``S×B×C×L``, ``target`` is ``B×L`` with -1 for unlabelled (or padded)
    seconds. Like the cross-entropy, the smoothing term only counts transitions between two
    labelled seconds: padding and unlabelled stretches neither add to it nor dilute it.
    """
    total = logits.new_zeros(())
    pair = (target[:, 1:] >= 0) & (target[:, :-1] >= 0)  # B×(L-1)
    pairs = pair.sum()
    for out in logits:
        total = total + F.cross_entropy(out, target, ignore_index=-1)
        if pairs > 0:
            logp = F.log_softmax(out.float(), dim=1)
            diff = torch.clamp((logp[:, :, 1:] - logp[:, :, :-1].detach()) ** 2, 0, 16)
            total = total + smooth * (diff * pair[:, None]).sum() / (pairs * out.shape[1])
    return total
