"""pycaffe's `caffe.Classifier`: a Net that classifies H x W x K images by
resizing, center-cropping or 10-crop oversampling them.

Mirrors: python/caffe/classifier.py
"""

import numpy as np

from . import imageio
from .errors import ProtonetError
from .net import TEST, Net


def input_transformer(net, mean=None, input_scale=None, raw_scale=None,
                      channel_swap=None):
    """A Transformer for the net's first input, configured as pycaffe's
    Classifier and Detector do (HxWxK images -> KxHxW, then the options)."""
    in_ = net.inputs[0]
    t = imageio.Transformer({in_: net.blobs[in_].shape})
    t.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        t.set_mean(in_, mean)
    if input_scale is not None:
        t.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        t.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        t.set_channel_swap(in_, channel_swap)
    return t


class Classifier(Net):
    """Image classification with preprocessing and optional oversampling.

    Args:
        model_file, pretrained_file: deploy prototxt and weights (the
            weights may be None for an untrained net).
        image_dims: (H, W) images are resized to before cropping; default
            the net's input size (whole-image "crop").
        mean, input_scale, raw_scale, channel_swap: the Transformer settings
            (see `protonet.imageio.Transformer`).
    """

    def __init__(self, model_file, pretrained_file=None, image_dims=None,
                 mean=None, input_scale=None, raw_scale=None,
                 channel_swap=None):
        super().__init__(model_file, weights=pretrained_file, phase=TEST)
        in_ = self.inputs[0]
        self.transformer = input_transformer(self, mean, input_scale,
                                             raw_scale, channel_swap)
        self.crop_dims = np.array(self.blobs[in_].shape[2:])
        if image_dims is None or len(image_dims) == 0:
            image_dims = self.crop_dims
        self.image_dims = np.array(image_dims)
        if (self.image_dims < self.crop_dims).any():
            raise ProtonetError(f"Classifier: image_dims {tuple(image_dims)} "
                                f"smaller than the net input "
                                f"{tuple(self.crop_dims)}")

    def predict(self, inputs, oversample=True):
        """Class probabilities (N x C) of N H x W x K images.

        With `oversample` the prediction is the mean over the 10 crops
        (corners, centre, mirrored); otherwise the centre crop only.
        """
        inputs = list(inputs)
        if not inputs:
            raise ProtonetError("Classifier.predict: no inputs")
        h, w = (int(d) for d in self.image_dims)
        images = np.zeros((len(inputs), h, w, inputs[0].shape[2]), np.float32)
        for ix, im in enumerate(inputs):
            images[ix] = imageio.resize_image(im, (h, w))
        if oversample:
            images = imageio.oversample(images, self.crop_dims)
        else:
            center = np.array([h, w]) / 2.0
            y0, x0 = (center - self.crop_dims / 2.0).astype(int)
            ch, cw = self.crop_dims
            images = images[:, y0:y0 + ch, x0:x0 + cw, :]
        in_ = self.inputs[0]
        caffe_in = np.stack([self.transformer.preprocess(in_, im)
                             for im in images])
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape(
                (len(predictions) // 10, 10, -1)).mean(1)
        return predictions
