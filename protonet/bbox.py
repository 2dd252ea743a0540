"""Box utilities of the SSD layers: encode/decode, IoU, NMS and matching.

Boxes are arrays of shape (..., 4) holding [xmin, ymin, xmax, ymax] in
normalised image coordinates.  Every function works on whole arrays of boxes;
only the greedy parts (bipartite matching over ground-truth boxes, greedy NMS
over the score-sorted candidates) loop, over boxes, never over pixels.

Mirrors: src/caffe/util/bbox_util.cpp of weiliu89/caffe (branch ssd).
"""

import numpy as np

from .proto import caffe_pb2

CORNER = caffe_pb2.PriorBoxParameter.CORNER
CENTER_SIZE = caffe_pb2.PriorBoxParameter.CENTER_SIZE
CORNER_SIZE = caffe_pb2.PriorBoxParameter.CORNER_SIZE


def box_size(boxes):
    """Area of each box; 0 for a box whose max is below its min (BBoxSize)."""
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return np.where((w < 0) | (h < 0), 0, w * h)


def jaccard(a, b):
    """IoU matrix (len(a), len(b)) of two box arrays (JaccardOverlap).

    NOTE(caffe): the union uses each box's own (unclipped) area, and boxes
    that merely touch (zero-width intersection) overlap 0.
    """
    a = a[:, None, :]
    b = b[None, :, :]
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0)
    union = box_size(a) + box_size(b) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / np.where(inter > 0, union, 1), 0)


def _center_size(boxes):
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return (boxes[..., 0] + boxes[..., 2]) / 2, \
        (boxes[..., 1] + boxes[..., 3]) / 2, w, h


def encode(priors, variances, code_type, variance_in_target, boxes):
    """Encode ground-truth `boxes` relative to their `priors` (EncodeBBox).

    All arrays are (M, 4).  Without `variance_in_target` the code is divided
    by the prior variances.
    """
    if code_type == CORNER:
        code = boxes - priors
    elif code_type == CENTER_SIZE:
        pcx, pcy, pw, ph = _center_size(priors)
        bcx, bcy, bw, bh = _center_size(boxes)
        code = np.stack([(bcx - pcx) / pw, (bcy - pcy) / ph,
                         np.log(bw / pw), np.log(bh / ph)], axis=-1)
    elif code_type == CORNER_SIZE:
        _, _, pw, ph = _center_size(priors)
        scale = np.stack([pw, ph, pw, ph], axis=-1)
        code = (boxes - priors) / scale
    else:
        raise ValueError(f"unknown code_type {code_type}")
    return code if variance_in_target else code / variances


def decode(priors, variances, code_type, variance_in_target, loc):
    """Decode predicted offsets `loc` (..., P, 4) against priors (P, 4)
    (DecodeBBox); boxes are not clipped."""
    var = np.ones_like(variances) if variance_in_target else variances
    if code_type == CORNER:
        return priors + var * loc
    if code_type == CENTER_SIZE:
        pcx, pcy, pw, ph = _center_size(priors)
        cx = var[:, 0] * loc[..., 0] * pw + pcx
        cy = var[:, 1] * loc[..., 1] * ph + pcy
        w = np.exp(var[:, 2] * loc[..., 2]) * pw
        h = np.exp(var[:, 3] * loc[..., 3]) * ph
        return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2],
                        axis=-1)
    if code_type == CORNER_SIZE:
        _, _, pw, ph = _center_size(priors)
        scale = np.stack([pw, ph, pw, ph], axis=-1)
        return priors + var * loc * scale
    raise ValueError(f"unknown code_type {code_type}")


def nms(boxes, scores, score_threshold, nms_threshold, eta=1.0, top_k=-1):
    """Greedy NMS of one class (ApplyNMSFast); returns kept indices.

    Candidates are the scores > score_threshold, stably sorted descending
    and cut to top_k; a candidate is kept when its IoU with every kept box
    is <= the (adaptive) threshold.  With eta < 1 the threshold is
    multiplied by eta after each kept box while it is above 0.5.
    """
    cand = np.flatnonzero(scores > score_threshold)
    cand = cand[np.argsort(-scores[cand], kind="stable")]
    if 0 <= top_k < len(cand):
        cand = cand[:top_k]
    if len(cand) == 0:
        return cand
    iou = jaccard(boxes[cand], boxes[cand])
    kept = []
    threshold = nms_threshold
    for i in range(len(cand)):
        if kept and iou[i, kept].max() > threshold:
            continue
        kept.append(i)
        if eta < 1 and threshold > 0.5:
            threshold *= eta
    return cand[kept]


def match(gt, priors, match_type, overlap_threshold, ignore_cross_boundary=False):
    """Match prior boxes to ground truth (MatchBBox).

    First a greedy bipartite pass (each ground truth, in order of the best
    remaining IoU, takes its best unmatched prior), then for PER_PREDICTION
    every other prior takes its best ground truth with IoU >= threshold.

    Returns:
        (indices, overlaps): per prior the matched gt index (-1 none, -2
        ignored cross-boundary prior) and the best IoU with any gt.
    """
    P, G = len(priors), len(gt)
    indices = np.full(P, -1, np.int64)
    overlaps = np.zeros(P, np.float64)
    if G == 0:
        return indices, overlaps
    iou = jaccard(priors, gt)
    valid = iou > 1e-6
    if ignore_cross_boundary:
        cross = ((priors < 0) | (priors > 1)).any(axis=1)
        indices[cross] = -2
        valid[cross] = False
    iou = np.where(valid, iou, -1.0)
    overlaps[:] = np.maximum(iou.max(axis=1), 0)
    work = iou.copy()
    for _ in range(G):
        # NOTE(caffe): ties go to the lowest prior, then the lowest gt index.
        flat = int(np.argmax(work))
        i, j = divmod(flat, G)
        if work[i, j] < 0:
            break
        indices[i] = j
        overlaps[i] = work[i, j]
        work[i, :] = -1
        work[:, j] = -1
    if match_type == caffe_pb2.MultiBoxLossParameter.PER_PREDICTION:
        free = indices == -1
        cand = np.where(iou >= overlap_threshold, iou, -1.0)
        best = np.argmax(cand, axis=1)
        best_iou = cand[np.arange(P), best]
        take = free & (best_iou >= 0)
        indices[take] = best[take]
        overlaps[take] = best_iou[take]
    return indices, overlaps
