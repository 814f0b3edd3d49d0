"""Segmentation metrics from a confusion matrix at full label resolution."""
from __future__ import annotations

from dataclasses import dataclass

import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """(C, C) counts, rows = ground truth, columns = prediction; ignored pixels are skipped."""
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).view(num_classes, num_classes)


@dataclass(frozen=True)
class SegMetrics:
    miou: float
    pixel_acc: float
    iou: tuple[float, ...]  # per class; NaN where the class is absent from prediction and truth

    @classmethod
    def from_confusion(cls, cm: torch.Tensor) -> SegMetrics:
        cm = cm.double()
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        present = ~iou.isnan()
        miou = iou[present].mean().item() if present.any() else float("nan")
        acc = (tp.sum() / cm.sum()).item() if cm.sum() > 0 else float("nan")
        return cls(miou, acc, tuple(iou.tolist()))
