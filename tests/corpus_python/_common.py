"""Shared helpers of the stand-in layers."""
import ast

import numpy as np

RNG = np.random.default_rng(1337)
HEIGHT, WIDTH = 96, 128


def params(param_str: str) -> dict:
    """py-faster-rcnn writes ``'key': value`` pairs, FCN a whole dict literal."""
    text = param_str.strip()
    return ast.literal_eval(text if text.startswith("{") else "{" + text + "}") if text else {}


def image(batch: int = 1) -> np.ndarray:
    return RNG.uniform(0, 255, size=(batch, 3, HEIGHT, WIDTH)).astype(np.float32)


def boxes(count: int, height: int, width: int) -> np.ndarray:
    """``count`` boxes (x1, y1, x2, y2) inside an image of that size."""
    x1 = RNG.uniform(0, width / 2, count)
    y1 = RNG.uniform(0, height / 2, count)
    return np.stack([x1, y1, x1 + RNG.uniform(8, width / 2, count), y1 + RNG.uniform(8, height / 2, count)], 1)
