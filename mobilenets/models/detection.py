"""SSD's detection machinery: anchors, box coding, matching, the loss with hard negative mining,
and post-processing with torchvision's NMS.

Conventions follow the TF object detection API configuration of SSDLite (`ssd_anchor_generator`,
`faster_rcnn_box_coder`, argmax matcher at IoU 0.5): boxes are (x1, y1, x2, y2) in pixels, class
0 is background, and a model's class logits have `num_classes` columns including it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms, box_iou

from ..core.errors import MobileNetsError

# ssd_anchor_generator defaults of the SSDLite config: six levels, scales spread linearly from
# 0.2 to 0.95 of the image side, five aspect ratios plus one extra scale of ratio 1 per cell,
# and only three boxes (a small 0.1 box, 2:1 and 1:2) on the finest level.
MIN_SCALE, MAX_SCALE = 0.2, 0.95
ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)
LOWEST_LEVEL = ((0.1, 1.0), (MIN_SCALE, 2.0), (MIN_SCALE, 0.5))
# faster_rcnn_box_coder's scale factors for (y, x, h, w), here in (x, y, w, h) order.
BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def level_shapes(num_levels: int) -> list[list[tuple[float, float]]]:
    """(scale, aspect ratio) of the anchors of every cell, per level."""
    scales = [MIN_SCALE + (MAX_SCALE - MIN_SCALE) * k / (num_levels - 1) for k in range(num_levels)]
    scales.append(1.0)
    shapes = [list(LOWEST_LEVEL)]
    for k in range(1, num_levels):
        level = [(scales[k], ar) for ar in ASPECT_RATIOS]
        level.append((math.sqrt(scales[k] * scales[k + 1]), 1.0))
        shapes.append(level)
    return shapes


def anchors_per_cell(num_levels: int) -> list[int]:
    return [len(s) for s in level_shapes(num_levels)]


def make_anchors(feature_sizes: list[tuple[int, int]], image_size: tuple[int, int]) -> torch.Tensor:
    """Anchors (N, 4) in pixels, ordered level by level, then row, column and cell shape, the
    order in which the prediction heads' outputs are flattened."""
    height, width = image_size
    out = []
    for (fh, fw), shapes in zip(feature_sizes, level_shapes(len(feature_sizes))):
        cy = (torch.arange(fh, dtype=torch.float32) + 0.5) / fh
        cx = (torch.arange(fw, dtype=torch.float32) + 0.5) / fw
        cy, cx = torch.meshgrid(cy, cx, indexing="ij")
        wh = torch.tensor([(s * math.sqrt(ar), s / math.sqrt(ar)) for s, ar in shapes])
        centers = torch.stack([cx, cy], -1).reshape(-1, 1, 2)
        boxes = torch.cat([centers - wh / 2, centers + wh / 2], -1).reshape(-1, 4)
        out.append(boxes)
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    return torch.cat(out) * scale


def encode(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Regression targets of `boxes` relative to `anchors` (both (N, 4) xyxy)."""
    wx, wy, ww, wh = BOX_CODER_WEIGHTS
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + aw / 2, anchors[:, 1] + ah / 2
    bw = (boxes[:, 2] - boxes[:, 0]).clamp(min=1e-3)
    bh = (boxes[:, 3] - boxes[:, 1]).clamp(min=1e-3)
    bx, by = boxes[:, 0] + bw / 2, boxes[:, 1] + bh / 2
    return torch.stack([wx * (bx - ax) / aw, wy * (by - ay) / ah,
                        ww * torch.log(bw / aw), wh * torch.log(bh / ah)], -1)


# exp() of a width code beyond this would overflow to inf for a badly initialised network.
_MAX_LOG_SCALE = math.log(1000.0 / 16)


def decode(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Inverse of `encode`; deltas (..., N, 4) against anchors (N, 4)."""
    wx, wy, ww, wh = BOX_CODER_WEIGHTS
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + aw / 2, anchors[:, 1] + ah / 2
    cx = deltas[..., 0] / wx * aw + ax
    cy = deltas[..., 1] / wy * ah + ay
    w = torch.exp((deltas[..., 2] / ww).clamp(max=_MAX_LOG_SCALE)) * aw
    h = torch.exp((deltas[..., 3] / wh).clamp(max=_MAX_LOG_SCALE)) * ah
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def match(gt_boxes: torch.Tensor, anchors: torch.Tensor, iou_threshold: float = 0.5) -> torch.Tensor:
    """Index of the ground-truth box each anchor is assigned to, or -1 for background.

    An anchor takes its best box when their IoU reaches the threshold; every box also takes its
    best anchor whatever the IoU, so small or oddly shaped objects are never left unmatched.
    """
    if gt_boxes.numel() == 0:
        return torch.full((anchors.shape[0],), -1, dtype=torch.long)
    iou = box_iou(gt_boxes, anchors)                  # (G, N)
    best_iou, matched = iou.max(0)
    matched[best_iou < iou_threshold] = -1
    best_anchor = iou.argmax(1)
    matched[best_anchor] = torch.arange(gt_boxes.shape[0])
    return matched


def build_targets(targets: list[dict], anchors: torch.Tensor, iou_threshold: float = 0.5):
    """(class labels (B, N) with 0 = background, regression targets (B, N, 4))."""
    labels, regress = [], []
    for t in targets:
        idx = match(t["boxes"], anchors, iou_threshold)
        pos = idx >= 0
        lab = torch.zeros(anchors.shape[0], dtype=torch.long)
        lab[pos] = t["labels"][idx[pos]]
        reg = torch.zeros(anchors.shape[0], 4)
        if pos.any():
            reg[pos] = encode(t["boxes"][idx[pos]], anchors[pos])
        labels.append(lab)
        regress.append(reg)
    return torch.stack(labels), torch.stack(regress)


# How class scores are made: "softmax" over the classes, background among them (the SSD paper's
# loss), or "sigmoid", an independent probability per class (the reference
# ssdlite_mobilenet_v2_coco config: weighted_sigmoid loss, SIGMOID score converter).
CLASSIFICATIONS = ("softmax", "sigmoid")


def check_classification(classification) -> str:
    if classification not in CLASSIFICATIONS:
        raise MobileNetsError(f"classification={classification!r} is not one of "
                              f"{', '.join(map(repr, CLASSIFICATIONS))}")
    return classification


def class_scores(logits: torch.Tensor, classification: str = "softmax") -> torch.Tensor:
    return logits.sigmoid() if classification == "sigmoid" else logits.softmax(-1)


@dataclass
class DetectionLoss:
    """SSD's multibox loss: smooth L1 on matched anchors plus the classification loss on matched
    anchors and on the hardest `neg_pos_ratio` background anchors per positive, normalised by
    the number of positives (SSD §2.2, "hard negative mining"). The classification loss is
    softmax cross-entropy, or with classification="sigmoid" binary cross-entropy of every
    class's logit against the one-hot target (background column included), summed per anchor."""
    neg_pos_ratio: int = 3
    iou_threshold: float = 0.5
    classification: str = "softmax"

    def __post_init__(self):
        check_classification(self.classification)

    def __call__(self, logits: torch.Tensor, deltas: torch.Tensor, targets: list[dict],
                 anchors: torch.Tensor) -> dict[str, torch.Tensor]:
        # Matching runs where the targets are (the CPU, as the data loader gives them).
        where = targets[0]["boxes"].device if targets else anchors.device
        labels, regress = build_targets(targets, anchors.to(where), self.iou_threshold)
        labels, regress = labels.to(logits.device), regress.to(deltas.device)
        pos = labels > 0
        num_pos = pos.sum(1, keepdim=True)
        box_loss = F.smooth_l1_loss(deltas[pos], regress[pos], reduction="sum", beta=1.0)
        if self.classification == "sigmoid":
            onehot = F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
            ce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none").sum(-1)
        else:
            ce = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")   # (B, N)
        # Rank the background anchors by their loss; keep the top k per image.
        neg_loss = ce.detach().masked_fill(pos, float("-inf"))
        order = neg_loss.argsort(1, descending=True).argsort(1)
        num_neg = (self.neg_pos_ratio * num_pos).clamp(min=self.neg_pos_ratio)
        neg = order < num_neg
        cls_loss = ce[pos | neg].sum()
        norm = num_pos.sum().clamp(min=1).float()
        return {"loss": (box_loss + cls_loss) / norm, "box_loss": box_loss / norm,
                "cls_loss": cls_loss / norm}


def postprocess(logits: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor,
                image_size: tuple[int, int], classification: str = "softmax",
                **kwargs) -> list[dict[str, torch.Tensor]]:
    """Per image: boxes, scores and labels from raw network outputs (see `select`); scores as
    the model was trained to make them (`classification`)."""
    boxes = decode(deltas, anchors.to(deltas.device))
    return select(boxes, class_scores(logits, classification), image_size, **kwargs)


def select(boxes: torch.Tensor, scores: torch.Tensor, image_size: tuple[int, int],
           score_threshold: float = 0.01, iou_threshold: float = 0.6, max_detections: int = 100,
           candidates_per_class: int = 300) -> list[dict[str, torch.Tensor]]:
    """Decoded boxes (B, N, 4) and class probabilities (B, N, C) to per-image detections:
    boxes clipped to the image, class-wise NMS, the best `max_detections` kept."""
    height, width = image_size
    boxes = boxes.clone()
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, width)
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, height)
    results = []
    num_classes = scores.shape[-1]
    for b in range(scores.shape[0]):
        all_boxes, all_scores, all_labels = [], [], []
        for c in range(1, num_classes):
            s = scores[b, :, c]
            keep = torch.nonzero(s > score_threshold).squeeze(1)
            if keep.numel() > candidates_per_class:
                keep = keep[s[keep].topk(candidates_per_class).indices]
            all_boxes.append(boxes[b, keep])
            all_scores.append(s[keep])
            all_labels.append(torch.full_like(keep, c))
        bx, sc, lb = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_labels)
        keep = batched_nms(bx, sc, lb, iou_threshold)[:max_detections]
        results.append({"boxes": bx[keep], "scores": sc[keep], "labels": lb[keep]})
    return results
