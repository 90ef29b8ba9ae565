"""Networks in plain ``torch.nn``: the multi-view ConvNet of Setio et al. (2016).

Build them from YAML with LightningCLI ``class_path: nodule.models.MultiStreamNet``.
"""

from __future__ import annotations

from nodule.models.multistream import MultiStreamNet, SetioStream, probability

__all__ = ["MultiStreamNet", "SetioStream", "probability"]
