"""JPEG decoding on a CUDA GPU (nvjpeg through ``torchvision.io.decode_jpeg``), for ``--decode nvjpeg``.

On a GPU box the decoder, not the network, sets the rate (DESIGN.md: ~1 ms of a core per
500x375 JPEG, against 30-55k images/s for MobileNetV2 on one H200), so decoding JPEGs on the
GPU frees the cores. Its pixels are not libjpeg's: nvjpeg's inverse DCT and upsampling
differ by a grey level here and there, it has no DCT-scaled decoding (every JPEG is decoded
at full size), and the resize is PyTorch's antialiased bilinear filter, not Pillow's. So it
is a pixel rule of its own (:data:`embedder.decode.NVJPEG`), with its own fingerprint
fields: a cache of nvjpeg pixels never takes rows made by Pillow, nor the other way round.

The rule, per image: the header is read by Pillow (format, size: bombs refused as by the
default rule; EXIF orientation); JPEGs are decoded by nvjpeg on the GPU, other formats by
Pillow; the image is turned upright (as ``ImageOps.exif_transpose``), resized on the GPU
(``interpolate(bilinear, antialias=True)``), rounded to whole grey levels as Pillow's uint8
output is, and only the small result is copied back. A JPEG that nvjpeg cannot decode
(e.g. CMYK) is a recorded failure naming ``--decode pillow``, never a silent Pillow decode
inside a cache whose fingerprint says nvjpeg.

Only :func:`require_cuda` and :func:`load` touch CUDA; the orientation and resize helpers
also run on CPU tensors (so they are tested where no GPU is).
"""

from __future__ import annotations

import numpy as np

from .errors import UsageError

EXIF_ORIENTATION = 0x0112
_checked: dict[str, bool] = {}


def require_cuda() -> None:
    """PyTorch with a visible CUDA device and torchvision's decode_jpeg, or a one-line UsageError."""
    if _checked.get("ok"):
        return
    hint = "use --decode pillow (the default), or run where PyTorch sees a CUDA GPU"
    try:
        import torch
    except ImportError:
        raise UsageError(f"--decode nvjpeg needs PyTorch with CUDA and torchvision, and PyTorch is not installed; "
                         f"{hint}") from None
    if not torch.cuda.is_available():
        raise UsageError(f"--decode nvjpeg decodes JPEGs on a CUDA GPU, and PyTorch sees none here "
                         f"(torch.cuda.is_available() is False); {hint}")
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except Exception as exc:  # ImportError, or torchvision built for another torch (RuntimeError)
        raise UsageError(f"--decode nvjpeg needs torchvision's decode_jpeg ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:120]}); {hint}") from None
    _checked["ok"] = True


def orient(image, orientation: int):
    """``[C, H, W]`` tensor turned upright for an EXIF orientation (1-8), as Pillow's
    ``ImageOps.exif_transpose`` does."""
    import torch

    if orientation == 2:  # mirrored
        return image.flip(-1)
    if orientation == 3:  # upside down
        return image.flip(-1).flip(-2)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:  # transpose
        return image.transpose(-1, -2)
    if orientation == 6:  # rotate 90 degrees clockwise
        return torch.rot90(image, -1, dims=(-2, -1))
    if orientation == 7:  # transverse
        return image.transpose(-1, -2).flip(-1).flip(-2)
    if orientation == 8:  # rotate 90 degrees counter-clockwise
        return torch.rot90(image, 1, dims=(-2, -1))
    return image


def resize(image, size: int) -> np.ndarray:
    """``[3, H, W]`` uint8 tensor (any device) -> ``float32 [size, size, 3]`` on the host:
    antialiased bilinear (half-pixel centres), rounded to whole levels like a uint8 image."""
    import torch

    x = image.to(torch.float32).unsqueeze(0)
    if image.shape[-2:] != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                            align_corners=False)
    x = x.round_().clamp_(0, 255)
    return x[0].permute(1, 2, 0).contiguous().cpu().numpy()


def to_tensor(image: np.ndarray, device: str = "cuda"):
    """``uint8 [H, W, 3]`` -> ``[3, H, W]`` on ``device``."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(device)


def decode_upright(data: bytes, limit: int, pillow_decode):
    """``[3, H, W]`` uint8 on the GPU, upright; ``pillow_decode(data, limit)`` decodes what is
    not a JPEG. Raises :class:`embedder.decode.DecodeError` with the reason."""
    from .decode import DecodeError, _open

    header = _open(data, limit)  # format and size from the header; bombs refused here
    if header.format not in ("JPEG", "MPO"):
        return to_tensor(pillow_decode(data, limit))
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        orientation = int(header.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception:  # unreadable EXIF: Pillow's exif_transpose also leaves such images as stored
        orientation = 1
    try:
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device="cuda")
    except Exception as exc:  # RuntimeError from nvjpeg: corrupt data, or a layout it does not decode
        text = " ".join(str(exc).split())[:120]
        raise DecodeError(f"nvjpeg cannot decode this JPEG ({text}); embed it with --decode pillow") from None
    return orient(decoded, orientation)
