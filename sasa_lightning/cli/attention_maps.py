"""`sasa attention`: where a trained model's attention layers look, drawn over an image.

For a pixel of the image, each chosen LocalSelfAttention2d's k x k window weights of every head
(from the layer itself: `attention_weights` on the input the layer saw in forward), placed over
the image where the window's cells are (a layer at stride s sees s x s image pixels per cell),
one panel per layer and head; and, for an attention stem with spatially aware values, its value
mixture weights p(a, b, m) as a small picture. The default pixels: the image's centre, and for a
classifier the pixel where its predicted class's activation map (the classifier's weights over
the last feature map) is highest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..atomic import atomic_write, make_parent
from ..errors import ConfigError
from ..nn import AttentionStem, LocalSelfAttention2d

@dataclass
class Window:
    """One panel: a head's weights over the window around `pixel` (image coordinates)."""

    layer: str
    head: int
    pixel: tuple[int, int]
    weights: Tensor  # (k, k), the window's cells row by row
    top_left: tuple[int, int]  # the image position of the window's first cell
    cell: int  # image pixels per cell side (the layer's stride from the image)


def load_network(checkpoint: str | os.PathLike) -> tuple[nn.Module, bool, tuple | None]:
    """(the network the maps are drawn from, whether it is a classifier, the (mean, std) the
    checkpoint knows): a classifier's ResNet, or a detector's backbone body, with the inference
    (EMA) weights."""
    from ..checkpoint import classifier_from, detector_from, is_detector, read_checkpoint, readable_checkpoint

    with readable_checkpoint(checkpoint) as file:
        state = read_checkpoint(file)
    if not is_detector(state.get("hyper_parameters") or {}):
        return classifier_from(state, checkpoint), True, None
    detector = detector_from(state, checkpoint)
    normalisation = (tuple(detector.transform.image_mean), tuple(detector.transform.image_std))
    return detector.backbone.body, False, normalisation


def attention_layers(network: nn.Module) -> dict[str, LocalSelfAttention2d]:
    return {name: m for name, m in network.named_modules() if isinstance(m, LocalSelfAttention2d)}


def default_layers(network: nn.Module) -> list[str]:
    """The first attention layer of each stage."""
    firsts = {}
    for name in attention_layers(network):
        firsts.setdefault(name.split(".")[1] if name.startswith("stages.") else name, name)
    return list(firsts.values())


def read_image(path: str | os.PathLike, mean, std) -> Tensor:
    """(1, 3, H, W), H and W rounded to multiples of 32 (the networks' total stride), normalised."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise ConfigError(f"image {str(path)!r} cannot be read: {error}") from None
    size = [max(32, round(side / 32) * 32) for side in image.size]
    image = image.resize(size, Image.Resampling.BILINEAR)
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size[1], size[0], 3)
    pixels = pixels.permute(2, 0, 1).float() / 255
    return ((pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])[None]


def _class_activation_peak(network: nn.Module, image: Tensor) -> tuple[int, int]:
    """The image pixel (centre of the feature map's cell) where the predicted class's activation map peaks."""
    features = network.forward_features(image)[0]  # (C, h, w)
    logits = network.forward_head(features[None])[0]
    activation = torch.einsum("c,chw->hw", network.fc.weight[logits.argmax()], features)
    row, col = divmod(int(activation.argmax()), activation.shape[1])
    cell = image.shape[-1] // features.shape[-1]
    return row * cell + cell // 2, col * cell + cell // 2


def attention_windows(network: nn.Module, image: Tensor, layers: list[str], pixels: list[tuple[int, int]]
                      ) -> list[Window]:
    """Every (pixel, layer, head) window of the chosen layers, from the layers' own weights on the
    inputs they saw in one forward pass of the image."""
    available = attention_layers(network)
    unknown = [name for name in layers if name not in available]
    if unknown:
        raise ConfigError(f"no attention layer named {unknown[0]!r}; the network has {', '.join(available) or 'none'}")
    height, width = image.shape[-2:]
    for row, col in pixels:
        if not (0 <= row < height and 0 <= col < width):
            raise ConfigError(f"--pixel {row},{col} is outside the image, which is {height}x{width} (rows x columns) "
                              f"as the network sees it")
    inputs = {}
    hooks = [available[name].register_forward_pre_hook(lambda module, args, name=name: inputs.__setitem__(name, args[0]))
             for name in layers]
    try:
        network(image)
    finally:
        for hook in hooks:
            hook.remove()
    windows = []
    for name in layers:
        layer, x = available[name], inputs[name]
        weights = layer.attention_weights(x)[0]  # (heads, k*k, h, w)
        cell, k, p = height // x.shape[-2], layer.kernel_size, layer.kernel_size // 2
        for row, col in pixels:
            i, j = row // cell, col // cell
            for head in range(layer.heads):
                windows.append(Window(name, head, (row, col), weights[head, :, i, j].view(k, k),
                                      ((i - p) * cell, (j - p) * cell), cell))
    return windows


def draw(image: Tensor, mean, std, windows: list[Window], mixtures: Tensor | None, out: str | os.PathLike) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picture = (image[0] * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]).clamp(0, 1)
    grey = picture.mean(0).numpy()
    heads = max(w.head for w in windows) + 1
    groups = list(dict.fromkeys((w.pixel, w.layer) for w in windows))
    rows = len(groups) + (mixtures is not None)
    figure, axes = plt.subplots(rows, max(heads, mixtures.shape[-1] if mixtures is not None else 0),
                                figsize=(1.8 * heads, 1.9 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    height, width = grey.shape
    for window in windows:
        axis = axes[groups.index((window.pixel, window.layer)), window.head]
        axis.imshow(grey, cmap="gray", extent=(0, width, height, 0))
        top, left = window.top_left
        k = window.weights.shape[0]
        axis.imshow(window.weights.numpy(), cmap="magma", alpha=0.6, vmin=0, interpolation="nearest",
                    extent=(left, left + k * window.cell, top + k * window.cell, top))
        axis.plot(window.pixel[1] + 0.5, window.pixel[0] + 0.5, "c+", markersize=8)
        axis.set_xlim(0, width)
        axis.set_ylim(height, 0)
        axis.set_title(f"{window.layer} h{window.head}\npixel {window.pixel[0]},{window.pixel[1]}", fontsize=6)
    if mixtures is not None:
        for m in range(mixtures.shape[-1]):
            axis = axes[-1, m]
            axis.imshow(mixtures[..., m].numpy(), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
            axis.set_title(f"stem p(a,b,m={m})", fontsize=6)
    figure.tight_layout()
    make_parent(out)
    written = atomic_write(out, lambda partial: figure.savefig(partial, dpi=110, format="png"))
    plt.close(figure)
    return written


def attention_maps(checkpoint: str | os.PathLike, image_path: str | os.PathLike, out: str | os.PathLike,
                   pixel: tuple[int, int] | None = None, layers: list[str] | None = None,
                   mean=None, std=None) -> tuple[Path, list[Window]]:
    """Draw the maps to `out`; (out, the windows drawn). mean/std: a classifier's input
    normalisation (default ImageNet's, the ImageNet pipeline's); a detector's is its own."""
    network, classifier, normalisation = load_network(checkpoint)
    if normalisation is not None:
        mean, std = normalisation
    else:
        from ..data.image_module import IMAGENET_MEAN, IMAGENET_STD

        mean, std = tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD)
    image = read_image(image_path, mean, std)
    layers = layers or default_layers(network)
    if not layers:
        raise ConfigError(f"checkpoint {str(checkpoint)!r} has no attention layers to draw")
    with torch.no_grad():
        if pixel is not None:
            pixels = [pixel]
        else:
            pixels = [(image.shape[-2] // 2, image.shape[-1] // 2)]
            if classifier:
                pixels.append(_class_activation_peak(network, image))
        windows = attention_windows(network, image, layers, list(dict.fromkeys(pixels)))
        stem = getattr(network, "stem", None)
        mixtures = stem.mixture_weights() if isinstance(stem, AttentionStem) and stem.values == "spatially_aware" else None
    return draw(image, mean, std, windows, mixtures, out), windows
