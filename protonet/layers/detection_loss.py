"""SSD training losses (weiliu89/caffe, branch ssd): MultiBoxLoss and
SmoothL1Loss (also py-faster-rcnn's 4-bottom form with sigma).

Mirrors: src/caffe/layers/{multibox_loss,smooth_l1_loss}_layer.cpp and
src/caffe/util/bbox_util.cpp of weiliu89/caffe (ssd).
"""

import numpy as np

from .. import bbox
from ..errors import LayerError
from ..layer import LossLayer, register
from ..proto import caffe_pb2
from .detection import FLT_MIN, _check_counts, _split_priors

_MBL = caffe_pb2.MultiBoxLossParameter
_NORM = caffe_pb2.LossParameter


def _smooth_l1(d, sigma2=1.0):
    """(f(d), f'(d)) of the smooth L1 function with knee at 1/sigma2."""
    a = np.abs(d)
    small = a < 1.0 / sigma2
    f = np.where(small, 0.5 * sigma2 * d * d, a - 0.5 / sigma2)
    df = np.where(small, sigma2 * d, np.sign(d))
    return f, df


@register("SmoothL1Loss")
class SmoothL1LossLayer(LossLayer):
    """Smooth L1 loss: SSD's 2-bottom form and Fast R-CNN's 4-bottom form.

    d = w_in * (a - b) (w_in = 1 with two bottoms); f(d) = 0.5 * sigma^2 *
    d^2 if |d| < 1/sigma^2, else |d| - 0.5/sigma^2; loss = sum(w_out * f(d))
    / N with N = shape(0).  da = w_out * w_in * f'(d) * top_diff / N,
    db = -da.  With two bottoms and sigma 1 this is weiliu89's layer.

    NOTE(caffe): weiliu89's 3-bottom form (weights) aborts at setup in Caffe
    (ExactNumBottomBlobs 2); we reject it too.

    Shape: bottoms of equal count (N, ...), optional inside / outside
    weights of the same count; top a 0-axis loss.

    Supports smooth_l1_loss_param.sigma (py-faster-rcnn, default 1).

    Mirrors: src/caffe/layers/smooth_l1_loss_layer.cpp (weiliu89 ssd and
    rbgirshick/py-faster-rcnn)
    """

    exact_num_bottom = None
    min_bottom = 2
    max_bottom = 4

    def allow_force_backward(self, bottom_index):
        return bottom_index < 2

    def setup(self, bottom, top):
        if len(bottom) == 3:
            raise LayerError(self, "takes 2 bottoms (predictions, targets) or "
                             "4 (plus inside and outside weights), got 3")
        sigma = self.param.smooth_l1_loss_param.sigma
        self.sigma2 = float(sigma) * float(sigma)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        for i, b in enumerate(bottom[1:], 1):
            if b.count != bottom[0].count:
                raise LayerError(self, f"bottom[{i}] has {b.count} values "
                                 f"(shape {b.shape}), bottom[0] has "
                                 f"{bottom[0].count} (shape {bottom[0].shape})")

    def forward(self, bottom, top):
        d = bottom[0].data - bottom[1].data.reshape(bottom[0].shape)
        if len(bottom) == 4:
            d *= bottom[2].data.reshape(d.shape)
        f, self._df = _smooth_l1(d, self.sigma2)
        if len(bottom) == 4:
            f *= bottom[3].data.reshape(d.shape)
        top[0].data[...] = np.sum(f, dtype=np.float64) / bottom[0].shape[0]

    def backward(self, top, propagate_down, bottom):
        g = self._df * (float(top[0].diff) / bottom[0].shape[0])
        if len(bottom) == 4:
            g = g * bottom[2].data.reshape(g.shape) * \
                bottom[3].data.reshape(g.shape)
        for i, sign in ((0, 1), (1, -1)):
            if propagate_down[i]:
                bottom[i].diff[...] = (sign * g).reshape(bottom[i].shape)
        if any(propagate_down[2:]):
            raise LayerError(self, "cannot backpropagate to the weights")


def _log_softmax_loss(x, labels):
    """Per row -log(max(softmax(x)[label], FLT_MIN)) and softmax(x)."""
    e = np.exp(x - x.max(axis=1, keepdims=True))
    prob = e / e.sum(axis=1, keepdims=True)
    p = prob[np.arange(len(x)), labels]
    return -np.log(np.maximum(p, FLT_MIN)), prob


def _sigmoid_ce(x, t):
    """Element-wise sigmoid cross-entropy (Caffe's stable form)."""
    pos = (x >= 0).astype(x.dtype)
    return -(x * (t - pos) - np.log1p(np.exp(x - 2 * x * pos)))


@register("MultiBoxLoss")
class MultiBoxLossLayer(LossLayer):
    """SSD's training loss: match priors to ground truth, mine negatives,
    localisation loss on the matches plus confidence loss.

    Per image, priors are matched to the ground truth boxes
    (`protonet.bbox.match`: bipartite, then per prediction IoU >=
    overlap_threshold).  MAX_NEGATIVE mining keeps, among unmatched priors
    with best IoU < neg_overlap, the int(num_pos * neg_pos_ratio) with the
    highest confidence loss against the background (ties: stable order).
    loss = loc_weight * L_loc / norm + L_conf / norm, where L_loc sums
    SmoothL1 (or 0.5 * d^2 for L2) of (loc - encoded gt) over the matches,
    L_conf sums the softmax (or sigmoid) cross-entropy over the matches and
    mined negatives (every prior with mining_type NONE), and norm is the
    loss_param normalisation (VALID = number of matches), at least 1.  A
    term is only added when its bottom's propagate_down is true.

    NOTE(caffe): with encode_variance_in_target the gt is encoded without
    the variances and both it and the prediction are divided by them; the
    gradient copied back to loc misses the 1/variance chain factor.  With
    LOGISTIC and mining_type NONE, image i's one-hot targets land at flat
    offset i*P + j*C + c (weiliu89 advances the target pointer by P, not
    P*C); we copy both.

    Shape: bottoms loc (N, P*L*4), conf (N, P*C) logits, priors (1, 2, P*4),
    ground truth (1, 1, G, 8) rows [image, label, instance, xmin, ymin,
    xmax, ymax, difficult] (image -1 = padding); top a 0-axis loss.

    Supports every multibox_loss_param field except mining_type HARD_EXAMPLE
    (and its nms_param / sample_size / use_prior_for_nms) and bp_inside.

    Mirrors: src/caffe/layers/multibox_loss_layer.cpp, util/bbox_util.cpp
    """

    exact_num_bottom = 4

    def allow_force_backward(self, bottom_index):
        return bottom_index < 2

    def setup(self, bottom, top):
        p = self.param.multibox_loss_param
        if not p.HasField("num_classes") or p.num_classes < 1:
            raise LayerError(self, "multibox_loss_param.num_classes (>= 1) "
                             "is required")
        self.p = p
        self.C = p.num_classes
        self.loc_classes = 1 if p.share_location else p.num_classes
        if p.HasField("do_neg_mining"):
            self.mining = _MBL.MAX_NEGATIVE if p.do_neg_mining else _MBL.NONE
        else:
            self.mining = p.mining_type
        if self.mining == _MBL.HARD_EXAMPLE:
            raise self.unsupported("mining_type", "HARD_EXAMPLE")
        if p.bp_inside:
            raise self.unsupported("bp_inside", True)
        if self.mining != _MBL.NONE:
            if not p.share_location:
                raise LayerError(self, "negative mining needs share_location")
            if p.neg_pos_ratio <= 0:
                raise LayerError(self, f"neg_pos_ratio must be > 0, got "
                                 f"{p.neg_pos_ratio}")
        if p.map_object_to_agnostic and self.C != (2 if p.background_label_id >= 0 else 1):
            raise LayerError(self, "map_object_to_agnostic needs num_classes "
                             "2 (1 without background)")
        lp = self.param.loss_param
        if not lp.HasField("normalization") and lp.HasField("normalize"):
            self.normalization = _NORM.VALID if lp.normalize else _NORM.BATCH_SIZE
        else:
            self.normalization = lp.normalization
        pd = list(self.param.propagate_down) or [True, True, False, False]
        self.use_loc, self.use_conf = bool(pd[0]), bool(pd[1])

    def reshape(self, bottom, top):
        if bottom[3].count % 8 or (bottom[3].num_axes == 4 and bottom[3].shape[3] != 8):
            raise LayerError(self, f"ground truth must be (1, 1, G, 8), got "
                             f"shape {bottom[3].shape}")
        _split_priors(self, bottom[2], "bottom[2]")
        _check_counts(self, bottom[0], bottom[1], bottom[2],
                      self.loc_classes, self.C)
        top[0].reshape(())

    def _ground_truth(self, rows):
        """{image: (boxes (G, 4), labels (G,))} (GetGroundTruth)."""
        p, gts = self.p, {}
        for r in rows:
            item = int(r[0])
            if item == -1:
                continue
            label = int(r[1])
            if label == p.background_label_id:
                raise LayerError(self, f"ground truth row {r.tolist()} has "
                                 f"the background label {label}")
            if not p.use_difficult_gt and bool(r[7]):
                continue
            gts.setdefault(item, ([], []))
            gts[item][0].append(r[3:7])
            gts[item][1].append(label)
        return {i: (np.array(b, np.float64), np.array(l, np.int64))
                for i, (b, l) in gts.items()}

    def _match(self, i, gt, priors, var, loc):
        """{label: (indices, overlaps)} for image i, labels in map order."""
        p = self.p
        boxes, labels = gt
        if p.use_prior_for_matching:
            idx, ov = bbox.match(boxes, priors, p.match_type,
                                 p.overlap_threshold, p.ignore_cross_boundary_bbox)
            if p.share_location:
                return {-1: (idx, ov)}
            out = {}
            for c in range(self.loc_classes):
                if c != p.background_label_id:
                    sel = np.where(idx >= 0, labels[np.maximum(idx, 0)] == c, False)
                    out[c] = (np.where(sel, idx, -1), ov)
            return out
        out = {}
        for c in range(self.loc_classes):
            label = -1 if p.share_location else c
            if label == p.background_label_id:
                continue
            pred = bbox.decode(priors, var, p.code_type,
                               p.encode_variance_in_target, loc[i, :, c])
            g = boxes if label == -1 else boxes[labels == label]
            gi = np.arange(len(boxes)) if label == -1 else np.flatnonzero(labels == label)
            idx, ov = bbox.match(g, pred, p.match_type, p.overlap_threshold,
                                 p.ignore_cross_boundary_bbox)
            out[label] = (np.where(idx >= 0, gi[np.maximum(idx, 0)], idx), ov)
        return out

    def _prior_conf_loss(self, conf_i, labels):
        """Per prior confidence loss w.r.t. `labels` (ComputeConfLoss)."""
        if self.p.conf_loss_type == _MBL.SOFTMAX:
            return _log_softmax_loss(conf_i, labels)[0]
        t = (np.arange(self.C)[None, :] == labels[:, None]).astype(conf_i.dtype)
        return _sigmoid_ce(conf_i, t).sum(axis=1)

    def _normalizer(self, N, P, num_matches):
        n = {_NORM.FULL: N * P, _NORM.VALID: num_matches,
             _NORM.BATCH_SIZE: N, _NORM.NONE: 1}[self.normalization]
        return max(1.0, float(n))

    def forward(self, bottom, top):
        p = self.p
        N, P = _check_counts(self, bottom[0], bottom[1], bottom[2],
                             self.loc_classes, self.C)
        priors, var = _split_priors(self, bottom[2], "bottom[2]")
        priors, var = priors.astype(np.float64), var.astype(np.float64)
        loc = bottom[0].data.reshape(N, P, self.loc_classes, 4)
        conf = bottom[1].data.reshape(N, P, self.C).astype(np.float64)
        gts = self._ground_truth(bottom[3].data.reshape(-1, 8).astype(np.float64))
        bg = p.background_label_id
        matches, negatives = [], []
        for i in range(N):
            m = self._match(i, gts[i], priors, var, loc) if i in gts else {}
            neg = np.zeros(0, np.int64)
            if self.mining == _MBL.MAX_NEGATIVE and m:
                labels = np.full(P, bg, np.int64)
                for idx, _ in m.values():
                    hit = (idx > -1) & (labels == bg)
                    labels[hit] = gts[i][1][idx[hit]]
                loss = self._prior_conf_loss(conf[i], labels)
                chosen = []
                for idx, ov in m.values():
                    elig = np.flatnonzero((idx == -1) & (ov < p.neg_overlap))
                    n = min(int(np.sum(idx > -1) * np.float32(p.neg_pos_ratio)),
                            len(elig))
                    order = np.argsort(-loss[elig], kind="stable")[:n]
                    chosen.append(elig[order])
                neg = np.unique(np.concatenate(chosen))
            matches.append(m)
            negatives.append(neg)
        self._matches, self._negatives = matches, negatives
        self._N, self._P = N, P

        # Localisation: gather matched predictions and encoded targets.
        pos = [(i, 0 if p.share_location else label, j, idx[j])
               for i, m in enumerate(matches)
               for label, (idx, _) in m.items()
               for j in np.flatnonzero(idx > -1)]
        self.num_matches = len(pos)
        loc_loss = 0.0
        if pos:
            ii, ll, jj, gg = (np.array(v) for v in zip(*pos))
            pred = loc[ii, jj, ll].astype(np.float64)
            gt_boxes = np.stack([gts[i][0][g] for i, g in zip(ii, gg)])
            target = bbox.encode(priors[jj], var[jj], p.code_type,
                                 p.encode_variance_in_target, gt_boxes)
            if p.encode_variance_in_target:
                if np.any(var[jj] <= 0):
                    raise LayerError(self, "prior variances must be > 0")
                pred, target = pred / var[jj], target / var[jj]
            d = pred - target
            if p.loc_loss_type == _MBL.SMOOTH_L1:
                f, self._loc_grad = _smooth_l1(d)
                loc_loss = float(f.sum())
            else:
                loc_loss, self._loc_grad = 0.5 * float(np.sum(d * d)), d
            self._loc_index = (ii, jj, ll)

        # Confidence: rows and targets.
        rows, targets = self._conf_rows(conf, gts, matches, negatives)
        self._conf_index = rows
        conf_loss = 0.0
        if rows is not None and len(targets):
            x = conf.reshape(-1, self.C)[rows] if self.mining != _MBL.NONE \
                else conf.reshape(-1, self.C)
            if p.conf_loss_type == _MBL.SOFTMAX:
                losses, prob = _log_softmax_loss(x, targets)
                conf_loss = float(losses.sum())
                prob[np.arange(len(x)), targets] -= 1
                self._conf_grad = prob
            else:
                conf_loss = float(_sigmoid_ce(x, targets).sum())
                self._conf_grad = 1 / (1 + np.exp(-x)) - targets
        else:
            self._conf_grad = None
        norm = self._normalizer(N, P, self.num_matches)
        self._norm = norm
        loss = 0.0
        if self.use_loc:
            loss += p.loc_weight * loc_loss / norm
        if self.use_conf:
            loss += conf_loss / norm
        top[0].data[...] = loss

    def _conf_rows(self, conf, gts, matches, negatives):
        """Flat (image*P + prior) rows and their targets (EncodeConfPrediction):
        ints for SOFTMAX, (rows, C) one-hot arrays for LOGISTIC."""
        p, N, P, C = self.p, self._N, self._P, self.C
        bg = p.background_label_id
        logistic = p.conf_loss_type == _MBL.LOGISTIC

        def label_of(i, g):
            return bg + 1 if p.map_object_to_agnostic else int(gts[i][1][g])
        if self.mining == _MBL.NONE:
            if logistic:
                # NOTE(caffe): weiliu89 advances the target pointer by P per
                # image, so image i's targets start at flat offset i*P.
                t = np.full(N * P * C, float(bg))
                for i, m in enumerate(matches):
                    for idx, _ in m.values():
                        for j in np.flatnonzero(idx > -1):
                            t[i * P + j * C + label_of(i, idx[j])] = 1
                return np.arange(N * P), t.reshape(N * P, C)
            t = np.full((N, P), bg, np.int64)
            for i, m in enumerate(matches):
                for idx, _ in m.values():
                    for j in np.flatnonzero(idx > -1):
                        t[i, j] = label_of(i, idx[j])
            return np.arange(N * P), t.reshape(-1)
        rows, labels = [], []
        for i, m in enumerate(matches):
            if i not in gts:
                continue
            pos = sorted((j, k) for k, (idx, _) in enumerate(m.values())
                         for j in np.flatnonzero(idx > -1))
            idxs = list(m.values())
            for j, k in pos:
                rows.append(i * P + j)
                labels.append(label_of(i, idxs[k][0][j]))
            for j in negatives[i]:
                rows.append(i * P + j)
                labels.append(bg)
        rows = np.array(rows, np.int64)
        labels = np.array(labels, np.int64)
        if not logistic:
            return rows, labels
        t = np.full((len(rows), C), float(bg))
        ok = (labels >= 0) & (labels < C)
        t[np.flatnonzero(ok), labels[ok]] = 1
        return rows, t

    def backward(self, top, propagate_down, bottom):
        N, P = self._N, self._P
        scale = float(top[0].diff) / self._norm
        if propagate_down[0]:
            diff = np.zeros((N, P, self.loc_classes, 4), self.dtype)
            if self.num_matches:
                # NOTE(caffe): no 1/variance factor with encode_variance_in_target.
                diff[self._loc_index] = self._loc_grad * (self.p.loc_weight * scale)
            bottom[0].diff[...] = diff.reshape(bottom[0].shape)
        if propagate_down[1]:
            diff = np.zeros((N * P, self.C), self.dtype)
            if self._conf_grad is not None:
                diff[self._conf_index] = self._conf_grad * scale
            bottom[1].diff[...] = diff.reshape(bottom[1].shape)
        if propagate_down[2] or propagate_down[3]:
            raise LayerError(self, "cannot backpropagate to priors or ground truth")
