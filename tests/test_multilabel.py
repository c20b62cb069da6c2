"""Multi-label success criteria (checks A8, F2): criterion views, thresholds from validation, flip rates."""
import itertools

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from robustmed.errors import UserError
from robustmed.multilabel import (calibrate_thresholds, decode, label_flips, parse_criterion, view_labels,
                                  view_logits, youden_threshold)

LABELS = ("pneumonia", "breast", "third")


def test_any_label_view_predicts_the_thresholded_label_vector():
    margins = torch.tensor([list(v) for v in itertools.product((-1.5, 0.5), repeat=3)])  # all 8 sign patterns
    criterion = parse_criterion("any", LABELS)
    predicted = view_logits(margins, criterion).argmax(1)
    assert torch.equal(predicted, view_labels((margins > 0).long(), criterion))
    assert decode(predicted.numpy(), 3).tolist() == (margins > 0).long().tolist()


def test_any_label_cross_entropy_is_the_sum_of_per_label_bce():
    gen = torch.Generator().manual_seed(0)
    margins, labels = torch.randn(32, 3, generator=gen), torch.randint(0, 2, (32, 3), generator=gen)
    criterion = parse_criterion(None, LABELS)
    ce = F.cross_entropy(view_logits(margins, criterion), view_labels(labels, criterion), reduction="none")
    bce = F.binary_cross_entropy_with_logits(margins, labels.float(), reduction="none").sum(1)
    assert torch.allclose(ce, bce, atol=1e-5)


def test_target_label_view_flips_only_with_that_label():
    criterion = parse_criterion("label:breast", LABELS)
    logits = view_logits(torch.tensor([[3.0, -0.2, 9.0], [-3.0, 0.7, -9.0]]), criterion)
    assert torch.allclose(logits, torch.tensor([[0.1, -0.1], [-0.35, 0.35]]))
    assert view_labels(torch.tensor([[1, 0, 1], [0, 1, 1]]), criterion).tolist() == [0, 1]
    assert criterion.num_classes == 2 and parse_criterion("any", LABELS).num_classes == 8


def test_criterion_errors_name_the_choices():
    with pytest.raises(UserError, match="use 'any' or one of label:pneumonia, label:breast, label:third"):
        parse_criterion("label:liver", LABELS)


def test_youden_threshold_maximises_balanced_accuracy():
    logits = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0, 4.0])
    labels = torch.tensor([0, 0, 1, 0, 1, 1])
    # −0.5 (recall 1, specificity 2/3) and 2.0 (recall 2/3, specificity 1) tie on balanced accuracy and on
    # accuracy (5/6 each): the threshold nearer 0 wins. Without the negative at 1.0 only −0.5 separates.
    assert youden_threshold(logits, labels) == -0.5
    assert youden_threshold(logits[[0, 1, 2, 4, 5]], labels[[0, 1, 2, 4, 5]]) == -0.5
    # mirrored label: −1.0 and 1.5 tie (5/6, 5/6), −1.0 is nearer 0
    both = calibrate_thresholds(torch.stack([logits, 1 - logits], 1), torch.stack([labels, 1 - labels], 1))
    assert both.tolist() == [-0.5, -1.0]


def test_label_flips_count_per_label_among_attacked_samples():
    # joint classes with 2 labels: bit 0 = pneumonia, bit 1 = breast
    rows = pd.DataFrame({"attack": "pgd20[joint]", "eps": 4 / 255, "label": [3, 3, 1, 2, 0],
                         "clean_pred": [3, 3, 1, 0, 0], "adv_pred": [1, 0, 1, 0, 2]})
    per = label_flips(rows, parse_criterion("any", LABELS[:2]))[str(4 / 255)]["pgd20[joint]"]
    # attacked: samples 0, 1, 2, 4 (every label right clean); flips: breast in 0 and 1, pneumonia in 1, breast in 4
    assert per["pneumonia"] == {"clean_accuracy": 1.0, "attacked": 4, "flipped": 1, "flip_rate": 0.25}
    assert per["breast"] == {"clean_accuracy": 0.8, "attacked": 4, "flipped": 3, "flip_rate": 0.75}
