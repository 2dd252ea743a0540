"""pycaffe's `caffe.Detector`: classify windows cropped from images (R-CNN
style), with optional context padding around each window.

Following R. Girshick et al., Rich feature hierarchies for accurate object
detection and semantic segmentation (arXiv:1311.2524).

Mirrors: python/caffe/detector.py
"""

import numpy as np

from . import imageio
from .errors import ProtonetError, UnsupportedError
from .classifier import input_transformer
from .net import TEST, Net


class Detector(Net):
    """Windowed detection: every window is cropped (plus context), warped
    to the net's input size and classified.

    Args:
        model_file, pretrained_file: deploy prototxt and weights.
        mean, input_scale, raw_scale, channel_swap: Transformer settings.
        context_pad: pixels of context around each window, in the net's
            input scale (R-CNN uses 16); 0/None for a plain crop.
    """

    def __init__(self, model_file, pretrained_file=None, mean=None,
                 input_scale=None, raw_scale=None, channel_swap=None,
                 context_pad=None):
        super().__init__(model_file, weights=pretrained_file, phase=TEST)
        self.transformer = input_transformer(self, mean, input_scale,
                                             raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows):
        """Classify windows of images.

        Args:
            images_windows: iterable of (image filename or H x W x K array,
                windows), a window being (ymin, xmin, ymax, xmax).

        Returns:
            list of {'window', 'prediction', 'filename'} dicts, in order.
        """
        images_windows = [(im, [np.asarray(w) for w in ws])
                          for im, ws in images_windows]
        window_inputs = []
        for image, windows in images_windows:
            if isinstance(image, np.ndarray):
                image = image.astype(np.float32)
            else:
                image = imageio.load_image(image).astype(np.float32)
            for window in windows:
                window_inputs.append(self.crop(image, window))
        if not window_inputs:
            return []
        in_ = self.inputs[0]
        caffe_in = np.stack([self.transformer.preprocess(in_, w)
                             for w in window_inputs])
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        detections, ix = [], 0
        for image, windows in images_windows:
            for window in windows:
                detections.append({"window": window,
                                   "prediction": predictions[ix],
                                   "filename": image if not isinstance(
                                       image, np.ndarray) else None})
                ix += 1
        return detections

    def detect_selective_search(self, image_fnames):
        """Selective Search proposals are not shipped with protonet."""
        raise UnsupportedError(
            None, "Detector.detect_selective_search: selective search window "
            "proposals are not shipped with protonet (pycaffe called the "
            "MATLAB package selective_search_ijcv_with_python). Compute the "
            "windows with any proposal method (e.g. opencv-contrib's "
            "cv2.ximgproc.segmentation.createSelectiveSearchSegmentation) "
            "and call detect_windows([(filename, windows), ...])")

    def crop(self, im, window):
        """The window (ymin, xmin, ymax, xmax) of `im`, with `context_pad`
        pixels of context (mean-padded where it leaves the image)."""
        window = np.asarray(window)
        y0, x0, y1, x1 = (int(v) for v in window[:4])
        crop = im[y0:y1, x0:x1]
        if not self.context_pad:
            return crop
        box = window.astype(float)
        crop_size = self.blobs[self.inputs[0]].shape[3]  # assumes square
        scale = crop_size / (1.0 * crop_size - self.context_pad * 2)
        half_h = (box[2] - box[0] + 1) / 2.0
        half_w = (box[3] - box[1] + 1) / 2.0
        center = (box[0] + half_h, box[1] + half_w)
        scaled = scale * np.array((-half_h, -half_w, half_h, half_w))
        box = np.round(np.tile(center, 2) + scaled)
        full_h, full_w = box[2] - box[0] + 1, box[3] - box[1] + 1
        scale_h, scale_w = crop_size / full_h, crop_size / full_w
        pad_y = int(round(max(0, -box[0]) * scale_h))  # out of bounds
        pad_x = int(round(max(0, -box[1]) * scale_w))
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0.0, [im_h, im_w, im_h, im_w])
        clip_h, clip_w = box[2] - box[0] + 1, box[3] - box[1] + 1
        if clip_h <= 0 or clip_w <= 0:
            raise ProtonetError(f"Detector.crop: window {tuple(window)} lies "
                                f"outside the {im_h}x{im_w} image")
        crop_h = int(round(clip_h * scale_h))
        crop_w = int(round(clip_w * scale_w))
        crop_h = min(crop_h, crop_size - pad_y)
        crop_w = min(crop_w, crop_size - pad_x)
        b = box.astype(int)
        context = imageio.resize_image(im[b[0]:b[2], b[1]:b[3]],
                                       (crop_h, crop_w))
        out = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
        out[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = context
        return out

    def configure_crop(self, context_pad):
        """Set the crop size (the net's input, H x W x K) and the context
        padding; with context the padding value is the mean, taken back to
        the raw image space (inverse transpose, channel order, raw scale)."""
        in_ = self.inputs[0]
        tpose = self.transformer.transpose[in_]
        inv_tpose = list(np.argsort(tpose))
        self.crop_dims = np.array(self.blobs[in_].shape[1:])[inv_tpose]
        self.context_pad = context_pad
        if not context_pad:
            return
        channel_order = self.transformer.channel_swap.get(in_)
        raw_scale = self.transformer.raw_scale.get(in_)
        mean = self.transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
            return
        crop_mean = np.broadcast_to(mean, self.blobs[in_].shape[1:])
        crop_mean = crop_mean.transpose(inv_tpose).astype(np.float32)
        if channel_order is not None:
            crop_mean = crop_mean[:, :, np.argsort(channel_order)]
        if raw_scale is not None:
            crop_mean = crop_mean / raw_scale
        self.crop_mean = crop_mean
