"""Random shifts, rotations and zoom of training batches, inside the compiled training loop.

Keras' preprocessing layers (``RandomTranslation``, ``RandomRotation``,
``RandomZoom``) resample with an op that XLA cannot compile, so the pipeline's
loop does the same affine resampling with plain gathers, which it can
(``train.augment_kernel: gather``). A loop that is not XLA-compiled (CNNs,
dropout) can use TensorFlow's own resampling kernel instead
(``augment_kernel: fused``): the same images to within float rounding,
computed several times faster, but not the same bits, so a model trained
with one is not byte-identical to one trained with the other. Random
draws are stateless: they depend only on ``train.seed`` and the optimizer step,
so every step gets fresh transformations and the same seed gives the same ones.
Nothing is written to disk; validation and test images are never transformed.

Gray batches are (N, H, W); colour batches (N, H, W, C) get the same: each
image's one transformation moves all of its channels alike.
"""

from __future__ import annotations

import math

import tensorflow as tf


def affine(images: tf.Tensor, dx: tf.Tensor, dy: tf.Tensor, angle: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    """Each image (batch x height x width) rotated by ``angle`` radians and scaled by
    ``scale`` about its centre, then moved ``dx`` pixels right and ``dy`` down.

    Bilinear interpolation; what comes in from outside the image is 0 (background).
    Integer shifts with no rotation or zoom move the pixels exactly. A colour batch
    (batch x height x width x channels) moves every channel of an image alike: each
    channel exactly as this function moves a gray image.
    """
    if images.shape.rank == 4:
        return per_channel(affine, images, dx, dy, angle, scale)
    height, width = images.shape[1], images.shape[2]
    centre_y, centre_x = (height - 1) / 2, (width - 1) / 2
    ys, xs = tf.meshgrid(tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32), indexing="ij")
    # For each output pixel, the source point it comes from (the inverse transform).
    px = xs[None] - centre_x - dx[:, None, None]
    py = ys[None] - centre_y - dy[:, None, None]
    cos, sin = (tf.cos(angle) / scale)[:, None, None], (tf.sin(angle) / scale)[:, None, None]
    src_x = cos * px + sin * py + centre_x
    src_y = -sin * px + cos * py + centre_y

    x0, y0 = tf.floor(src_x), tf.floor(src_y)
    wx, wy = src_x - x0, src_y - y0
    flat = tf.reshape(images, [-1, height * width])
    out = tf.zeros_like(src_x)
    for oy, weight_y in ((0.0, 1 - wy), (1.0, wy)):
        for ox, weight_x in ((0.0, 1 - wx), (1.0, wx)):
            x, y = x0 + ox, y0 + oy
            inside = (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
            index = tf.cast(tf.clip_by_value(y, 0, height - 1) * width + tf.clip_by_value(x, 0, width - 1), tf.int32)
            pixels = tf.reshape(tf.gather(flat, tf.reshape(index, [-1, height * width]), batch_dims=1), tf.shape(x))
            out += tf.where(inside, pixels * weight_y * weight_x, 0.0)
    return out


def per_channel(move, images: tf.Tensor, *transform: tf.Tensor) -> tf.Tensor:
    """``move`` (a gray batch's function) applied to each channel of a colour batch, with its image's
    ``transform`` (per-image tensors): the channels become images of their own, and back."""
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    planes = tf.reshape(tf.transpose(images, [0, 3, 1, 2]), [-1, height, width])
    moved = move(planes, *(tf.repeat(t, channels) for t in transform))
    return tf.transpose(tf.reshape(moved, [-1, channels, height, width]), [0, 2, 3, 1])


def affine_fused(images: tf.Tensor, dx: tf.Tensor, dy: tf.Tensor, angle: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    """``affine`` computed by TensorFlow's ``ImageProjectiveTransformV3`` kernel (bilinear, 0 outside):
    one op instead of four gathers, but one XLA cannot compile. Colour batches too (the kernel moves
    every channel alike)."""
    height, width = images.shape[1], images.shape[2]
    centre_y, centre_x = (height - 1) / 2, (width - 1) / 2
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    # The kernel's transform maps each output pixel (x, y) to its source point, as ``affine`` computes it:
    # src_x = cos*x + sin*y + a2, src_y = -sin*x + cos*y + b2.
    a2 = centre_x - cos * (centre_x + dx) - sin * (centre_y + dy)
    b2 = centre_y + sin * (centre_x + dx) - cos * (centre_y + dy)
    zero = tf.zeros_like(cos)
    transforms = tf.stack([cos, sin, a2, -sin, cos, b2, zero, zero], axis=1)
    colour = images.shape.rank == 4
    moved = tf.raw_ops.ImageProjectiveTransformV3(
        images=images if colour else images[..., None],
        transforms=transforms,
        output_shape=[height, width],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return moved if colour else moved[..., 0]


KERNELS = {"gather": affine, "fused": affine_fused}


def random_affine(
    images: tf.Tensor,
    seed: tf.Tensor,
    shift: float,
    rotation: float,
    zoom: float,
    background: float = 0.0,
    kernel: str = "gather",
) -> tf.Tensor:
    """``images`` (gray N x H x W, or colour N x H x W x C) each moved by up to ``shift`` pixels
    per axis, rotated by up to ``rotation`` degrees either way and scaled by 1 +/- up to ``zoom``,
    uniformly at random (one transformation per image, all its channels alike).

    ``seed`` is a shape-[2] integer tensor: the same seed gives the same
    transformations. ``background`` is the value of an empty pixel after
    normalization (0 for minmax; negative for zscore). ``kernel``: ``KERNELS``' key.
    """
    draws = tf.random.stateless_uniform([tf.shape(images)[0], 4], seed=seed, minval=-1.0, maxval=1.0)
    moved = KERNELS[kernel](
        images - background,
        dx=draws[:, 0] * shift,
        dy=draws[:, 1] * shift,
        angle=draws[:, 2] * (rotation * math.pi / 180),
        scale=1 + draws[:, 3] * zoom,
    )
    return moved + background
