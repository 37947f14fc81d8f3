"""Training-time augmentation of clip batches, on the device, one transform per clip.

Surgical video varies between hospitals and cases in framing (zoom, port placement), camera
orientation, white balance, light-source brightness and tissue colour; a phase model must not
learn those. Each training clip therefore gets a random resized crop, a horizontal flip and a
colour jitter (brightness, contrast, saturation, hue). The *same* transform is applied to every
frame of one clip, so motion within a clip stays as it was recorded.

Batches arrive as ``uint8`` ``B×C×T×H×W`` (decoded in loader workers) and are transformed here on
whatever device they were moved to, then normalised as every model input is. Parameters are
drawn from torch's CPU generator, which the training loop seeds per epoch, so augmented runs
repeat exactly on CPU. Evaluation and feature extraction never augment.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from surgflow.data.clips import normalise

# ITU-R BT.601 luma, and the YIQ basis in which a hue shift is a rotation of the chroma plane
_LUMA = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114],
                            [0.596, -0.274, -0.322],
                            [0.211, -0.523, 0.312]], dtype=torch.float64)


def _uniform(n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, dtype=torch.float64)


def crop_flip_theta(n: int, spec: Any) -> torch.Tensor:
    """``n×2×3`` affine matrices (normalised coordinates) of random resized crops, mirrored
    with probability ``spec.flip``: each crop keeps a share of the area drawn from
    ``spec.crop_scale`` with an aspect ratio drawn (log-uniformly) from ``spec.crop_ratio``."""
    area = _uniform(n, *spec.crop_scale)
    log_ratio = _uniform(n, math.log(spec.crop_ratio[0]), math.log(spec.crop_ratio[1]))
    ratio = torch.exp(log_ratio)
    sx = torch.sqrt(area * ratio).clamp(max=1.0)  # share of the width kept
    sy = torch.sqrt(area / ratio).clamp(max=1.0)
    tx = (2 * torch.rand(n, dtype=torch.float64) - 1) * (1 - sx)
    ty = (2 * torch.rand(n, dtype=torch.float64) - 1) * (1 - sy)
    flip = torch.where(torch.rand(n, dtype=torch.float64) < spec.flip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = sx * flip, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    return theta


def colour_matrices(n: int, spec: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per clip: brightness factors, contrast factors and a ``3×3`` RGB matrix applying the
    saturation factor and the hue rotation (``spec.hue`` is a fraction of the colour wheel)."""
    brightness = _uniform(n, 1 - spec.brightness, 1 + spec.brightness)
    contrast = _uniform(n, 1 - spec.contrast, 1 + spec.contrast)
    saturation = _uniform(n, 1 - spec.saturation, 1 + spec.saturation)
    angle = _uniform(n, -spec.hue, spec.hue) * 2 * math.pi
    yiq = _RGB_TO_YIQ
    back = torch.linalg.inv(yiq)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(n, 3, 3, dtype=torch.float64)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1], rot[:, 1, 2] = cos * saturation, -sin * saturation
    rot[:, 2, 1], rot[:, 2, 2] = sin * saturation, cos * saturation
    return brightness, contrast, back @ rot @ yiq


def augment(clips: torch.Tensor, spec: Any) -> torch.Tensor:
    """Augmented, normalised float clips from ``uint8`` clips ``B×C×T×H×W`` (on their device)."""
    b, c, t, h, w = clips.shape
    device = clips.device
    x = clips.to(torch.float32)
    if spec.crop_scale[0] < 1.0 or spec.flip > 0:
        theta = crop_flip_theta(b, spec).to(device, torch.float32)
        flat = x.reshape(b, c * t, h, w)  # one grid per clip: every frame moves alike
        grid = F.affine_grid(theta, [b, c * t, h, w], align_corners=False)
        x = F.grid_sample(flat, grid, mode="bilinear", padding_mode="reflection",
                          align_corners=False).reshape(b, c, t, h, w)
    brightness, contrast, matrix = (m.to(device, torch.float32) for m in colour_matrices(b, spec))
    x = x * brightness.view(b, 1, 1, 1, 1)
    luma = torch.tensor(_LUMA, device=device).view(1, 3, 1, 1, 1)
    grey = (x * luma).sum(1, keepdim=True).mean(dim=(2, 3, 4), keepdim=True)
    x = (x - grey) * contrast.view(b, 1, 1, 1, 1) + grey
    x = torch.einsum("bij,bjthw->bithw", matrix, x)
    return normalise(x.clamp_(0, 255))
