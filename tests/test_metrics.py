"""mIoU from a confusion matrix, checked against hand-computed examples."""
import math

import torch

from trainers.metrics import SegMetrics, confusion_matrix


def test_hand_computed_example():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 1]])
    cm = confusion_matrix(pred, target, 4)
    # class 0: tp 1, fp 1 (a 2 predicted as 0), fn 1 -> 1/3; class 1: tp 3, fp 1, fn 0 -> 3/4;
    # class 2: tp 1, fn 1 -> 1/2 (the ignored pixel predicted 2 does not count); class 3 absent.
    m = SegMetrics.from_confusion(cm)
    assert math.isnan(m.iou[3])
    assert m.iou[:3] == (1 / 3, 3 / 4, 1 / 2)
    assert abs(m.miou - (1 / 3 + 3 / 4 + 1 / 2) / 3) < 1e-12
    assert abs(m.pixel_acc - 5 / 7) < 1e-12


def test_class_only_predicted_counts_with_iou_zero():
    target = torch.zeros(2, 2, dtype=torch.long)
    pred = torch.tensor([[0, 0], [0, 1]])
    m = SegMetrics.from_confusion(confusion_matrix(pred, target, 3))
    assert m.iou[0] == 3 / 4 and m.iou[1] == 0.0 and math.isnan(m.iou[2])
    assert m.miou == 3 / 8


def test_perfect_prediction():
    t = torch.randint(0, 5, (16, 16))
    assert SegMetrics.from_confusion(confusion_matrix(t, t, 5)).miou == 1.0
