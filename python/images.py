"""Image patches for the sparse-coding program, its tests and its bench: contrast-normalised
patches of the images that ship with scikit-learn, and noise with the same statistics."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def image_patches(count: int, size: int = 8, seed: int = 0) -> Tensor:
    """`count` contrast-normalised size x size patches, (count, size*size) float32, drawn at
    random from scikit-learn's bundled sample images (grey levels in [0, 1]): each patch minus
    its mean, divided by its norm; nearly flat patches (norm < 0.01) are left out."""
    from sklearn.datasets import load_sample_images
    from sklearn.feature_extraction.image import extract_patches_2d
    rng = np.random.RandomState(seed)
    images = load_sample_images().images
    patches = []
    for image in images:
        grey = image.mean(2) / 255.0
        drawn = extract_patches_2d(grey, (size, size), max_patches=count, random_state=rng)
        patches.append(drawn.reshape(len(drawn), -1))
    patches = np.concatenate(patches)
    patches = patches - patches.mean(1, keepdims=True)
    norms = np.linalg.norm(patches, axis=1)
    patches = patches[norms > 0.01] / norms[norms > 0.01, None]
    if len(patches) < count:
        raise ValueError(f"image_patches: only {len(patches)} patches of contrast, asked for {count}")
    return torch.from_numpy(patches[rng.permutation(len(patches))[:count]]).float()


def noise_like(y: Tensor, seed: int = 0) -> Tensor:
    """Random patches with the statistics that contrast normalisation fixes: zero mean, and
    each the norm of the corresponding row of y."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(y.shape, generator=g, dtype=y.dtype)
    noise = noise - noise.mean(1, keepdim=True)
    return noise / noise.norm(dim=1, keepdim=True) * y.norm(dim=1, keepdim=True)
