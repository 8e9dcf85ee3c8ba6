"""The last convolutional feature map as a second graph output, for class activation maps.

ResNet18 ends in global average pooling and one linear layer, so for class c
    logit_c = Σ_k w_ck · mean_hw(A_k) + b_c
and the class activation map Σ_k w_ck · A_k (Zhou et al., 2016) is exactly the Grad-CAM map
at the last convolution (∂logit_c/∂A_k = w_ck / hw, a constant). Serving then needs only the
feature map A (N, K, h, w) and the fc weights: numpy, no autograd, no torch.

The fc weights travel in the metadata (`mhist.explain`) rather than being read back from the
graph's initializers: the INT8 file's fc weights are 7-bit integers plus scales, and the two
files must draw the same map from the same fp32 weights. Naming them in the metadata also
keeps serving independent of how exporter and quantizer name initializers.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import ResNet

FEATURE_OUTPUT = "features"
CAM_METHOD = "cam"


class WithFeatures(nn.Module):
    """A torchvision ResNet returning (logits, last feature map) instead of logits alone.

    The same modules in the same order as ResNet.forward, so the logits are bit-identical;
    the feature map is layer4's output, before global average pooling.
    """

    def __init__(self, model: ResNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))  # (N, 64, S/4, S/4)
        features = m.layer4(m.layer3(m.layer2(m.layer1(x))))  # (N, 512, S/32, S/32)
        logits = m.fc(torch.flatten(m.avgpool(features), 1))  # (N, C)
        return logits, features


def supports_cam(model: nn.Module) -> bool:
    """A ResNet whose head is global average pooling then one linear layer (CAM holds)."""
    return (
        isinstance(model, ResNet)
        and isinstance(model.avgpool, nn.AdaptiveAvgPool2d)
        and model.avgpool.output_size in (1, (1, 1))
        and isinstance(model.fc, nn.Linear)
    )


def with_features(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """The module to export and its extra output names: none for a model CAM does not fit."""
    if supports_cam(model):
        # eval() on the wrapper too: the exporter reads the top module's mode.
        return WithFeatures(model).eval(), [FEATURE_OUTPUT]
    return model, []


def explain_metadata(model: nn.Module) -> dict:
    """`mhist.explain` for a model exported with `with_features`; {} when CAM does not fit.

    float32 values become Python floats exactly (`tolist`), and JSON round-trips them exactly,
    so serving multiplies by the very weights the graph holds in its FP32 file.
    """
    if not supports_cam(model):
        return {}
    fc = model.fc
    return {
        "method": CAM_METHOD,
        "feature_output": FEATURE_OUTPUT,
        "weights": fc.weight.detach().cpu().float().tolist(),  # (C, K)
        "bias": fc.bias.detach().cpu().float().tolist() if fc.bias is not None else
        [0.0] * fc.out_features,  # (C,)
    }
