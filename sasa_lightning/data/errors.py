"""Errors about what the user gave (paths, files, options), reported by the CLI as one line."""

from ..errors import UserError


class DataError(UserError, ValueError):
    """A data path or file that cannot be used, with what would be right."""


def require_path(path, what: str) -> None:
    """Raise DataError unless `path` exists."""
    from pathlib import Path

    if not Path(path).exists():
        raise DataError(f"{what} {str(path)!r} does not exist")


def read_rgb(path) -> "torch.Tensor":
    """A uint8 CHW RGB image, decoded by PIL (torchvision's decode_image is deprecated since 0.29
    in favour of TorchCodec, which the classification data does not need either); DataError
    naming the file if it does not decode."""
    from torchvision.transforms.v2.functional import pil_to_tensor

    return pil_to_tensor(open_pil_rgb(path))


def open_pil_rgb(path):
    """torchvision ImageFolder's loader (PIL, RGB), with a DataError naming the file if it does not decode."""
    from PIL import Image

    try:
        with open(path, "rb") as file:
            return Image.open(file).convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:  # PIL's errors for damaged files
        raise DataError(f"image {str(path)!r} cannot be read ({type(error).__name__}: {error}); remove or replace it") from None
