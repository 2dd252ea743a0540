"""protonet's random number generator (Caffe's `Caffe::RNG`).

One NumPy generator for fillers, dropout masks, data shuffling and the
other random choices; `set_random_seed` makes a run reproducible.
"""

import numpy as np

_generator = np.random.default_rng()


def set_random_seed(seed):
    """Reseed protonet's generator (pycaffe's `caffe.set_random_seed`)."""
    global _generator
    _generator = np.random.default_rng(int(seed))


def generator():
    return _generator


def get_state():
    """The generator's state (for exact resume)."""
    return _generator.bit_generator.state


def set_state(state):
    _generator.bit_generator.state = state
