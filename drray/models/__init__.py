"""The model zoo by name: `build_rater` / `build_inner` look an arch up in the registries that
drray.models.image and drray.models.text fill (imported here, so any user of the zoo sees them)."""
from __future__ import annotations

from torch import nn

from drray.data.modality import modality_for
from drray.errors import ConfigError
from drray.models import image, text  # noqa: F401  (register the built-in archs)
from drray.registry import INNER_MODELS, RATERS


def choose_arch(arch: str, row_shape: tuple[int, ...]) -> str:
    """'auto' -> an MLP for small images (8x8 digits), a CNN for larger ones (28x28 MNIST), a
    transformer for token sequences (row_shape (L,))."""
    if arch != "auto":
        return arch
    return modality_for(row_shape).default_arch(row_shape)


def build_rater(arch: str, row_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return _builder(RATERS, "rater", arch, row_shape)(tuple(row_shape), num_classes)


def build_inner(arch: str, row_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return _builder(INNER_MODELS, "inner", arch, row_shape)(tuple(row_shape), num_classes)


def _builder(registry, section: str, arch: str, row_shape):
    """The registered builder, refused when it is for another modality (builders are for images
    unless marked `builder.modality = "text"`)."""
    name = choose_arch(arch, row_shape)
    builder = registry.get(name)
    data, made_for = modality_for(row_shape).name, getattr(builder, "modality", "image")
    if data != made_for:
        raise ConfigError(f"{section}.arch={name} is a model for {made_for} data but the data is {data}; "
                          f"set {section}.arch=auto")
    return builder
