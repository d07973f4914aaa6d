"""Images to uint8 tensors for the device-augmentation path (`data.augment_on=device`).

torchvision's `decode_image` (libjpeg-turbo, libpng, libwebp) hands a (3, H, W) uint8 tensor straight
to the tensor crop and resize that follow, faster than PIL's open + decode + convert (docs/data.md's
data-path table). Formats it cannot read
(BMP, TIFF, PPM, ...) go through PIL, which also names a damaged file."""
from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image

from distill.errors import DataError, first_line

# torchvision 0.29 marks its decoders deprecated in favour of TorchCodec's, which would add a package
# (and its FFmpeg libraries) to every install; the decoders work, and a worker would print this per image.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


def pil_to_tensor(im: Image.Image) -> torch.Tensor:
    """An image in any mode -> uint8 (3, H, W) RGB."""
    return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)


def decode_rgb(data: bytes, where: str) -> torch.Tensor:
    """Encoded image bytes -> uint8 (3, H, W) RGB; DataError naming `where` if no decoder can read them."""
    try:
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError):  # a format torchvision lacks, or a damaged file: PIL decides which
        pass
    try:
        with Image.open(io.BytesIO(data)) as im:
            return pil_to_tensor(im)
    except OSError as e:
        raise DataError(f"{where}: cannot decode image ({first_line(e)}); remove or replace it") from None
