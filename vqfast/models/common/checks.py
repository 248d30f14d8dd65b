"""Argument checks the families' models and samplers share (messages name the argument)."""
from __future__ import annotations

import torch


def check_class_labels(class_labels: torch.Tensor | None, batch: int, num_classes: int) -> None:
    """Raise unless class_labels is None or int64 [batch] in [0, num_classes] (num_classes: the null class)."""
    if class_labels is None:
        return
    if num_classes == 0:
        raise ValueError("class_labels given but the model was built with num_classes=0")
    if not isinstance(class_labels, torch.Tensor) or class_labels.dtype != torch.long:
        got = getattr(class_labels, "dtype", type(class_labels))
        raise TypeError(f"class_labels must be an int64 tensor, got {got}")
    if tuple(class_labels.shape) != (batch,):
        raise ValueError(f"class_labels must be [B={batch}], got {tuple(class_labels.shape)}")
    if batch and (class_labels.min() < 0 or class_labels.max() > num_classes):
        raise ValueError(f"class_labels must lie in [0, {num_classes}] ({num_classes}: the null "
                         f"class), got range [{int(class_labels.min())}, {int(class_labels.max())}]")


def check_batch_size(batch_size) -> None:
    """Raise unless batch_size is None or a positive int."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def check_image_dtype(images: torch.Tensor, weight: torch.Tensor) -> None:
    """Raise unless float images can meet the model's weights: the same dtype, or any float under
    torch.autocast (which casts both)."""
    if images.dtype != weight.dtype and not torch.is_autocast_enabled(images.device.type):
        raise TypeError(f"images are {images.dtype} but the model's weights are {weight.dtype}: cast the images "
                        f"(images.to({weight.dtype})) or run under torch.autocast")
