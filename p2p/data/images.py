"""Decode and validate one image; encode PNG deterministically.

Every image p2p reads goes through `open_image`, which decodes the whole file (a truncated
file fails here, not in the middle of training), applies the EXIF orientation tag (a camera
photo shot in portrait comes out upright, in import, build and predict alike) and applies one
explicit channel policy:

channels=3 (RGB):
    RGB as is; L (grayscale), 1 (bilevel) and P (palette) are converted to RGB (no information
    is invented: gray becomes three equal channels); CMYK and YCbCr are converted to RGB;
    RGBA / LA / PA are converted only when the alpha channel is fully opaque (255 everywhere),
    otherwise rejected: real transparency has no single right background.
channels=1 (grayscale):
    L as is; 1 (bilevel) converted to L; RGB, palette or opaque RGBA whose colour channels are
    all identical (a gray image stored as colour) converted to L losslessly; a real colour
    image is rejected ("has 3 colour channels, expected 1") unless the caller asks for
    `gray_from_color=True`, which converts with ITU-R 601 luma (PIL's "L").
16-bit grayscale (I;16*, or I with values in 0..65535) is converted to 8 bits by scaling
(round(v * 255 / 65535)); 32-bit float and other modes are rejected. Multi-frame files
(animations, multipage TIFF) are rejected. Errors are `DataError("<name>: <reason>")`.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from p2p.errors import DataError

# Extensions the reference pix2pix repo accepts, compared case-insensitively.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff"})

# Fixed PNG settings: the same pixels always give the same bytes (no timestamps, no metadata).
PNG_COMPRESS_LEVEL = 1  # zlib level: 2x faster than 6 for ~9% more bytes


def is_image_file(path: str | Path) -> bool:
    """True if the file name has one of IMAGE_EXTENSIONS (any case)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def open_image(
    src: str | Path | bytes,
    *,
    name: str,
    channels: int,
    gray_from_color: bool = False,
    exif_transpose: bool = True,
    notes: list[str] | None = None,
) -> Image.Image:
    """Open, fully decode and validate an image, returning it in mode "RGB" or "L".

    Args:
        src: a file path or the encoded bytes.
        name: how errors name the image (usually its path).
        channels: 3 for RGB, 1 for grayscale; see the module docstring for the policy.
        gray_from_color: with channels=1, convert real colour images with luma instead of
            rejecting them.
        exif_transpose: rotate/flip by the EXIF orientation tag (camera photos); on by default.
        notes: if given, a description of each conversion made is appended (for reports).

    Returns:
        A loaded PIL image in mode "RGB" (channels=3) or "L" (channels=1).

    Raises:
        DataError: "<name>: <reason>" for a missing, empty, non-image, corrupt, truncated,
            multi-frame or wrongly channelled image.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    data = _read_bytes(src, name)
    if not data:
        raise DataError(f"{name}: empty file (0 bytes)")
    img = _decode(data, name)
    if exif_transpose:
        try:
            img = ImageOps.exif_transpose(img)
        except Exception as e:  # noqa: BLE001 - malformed EXIF comes in many exception types
            raise DataError(f"{name}: unreadable EXIF orientation ({e})") from None
    w, h = img.size
    if w == 0 or h == 0:
        raise DataError(f"{name}: image has zero size ({w}x{h})")
    return to_channels(
        img, name=name, channels=channels, gray_from_color=gray_from_color, notes=notes
    )


def encode_png(img: Image.Image) -> bytes:
    """PNG bytes with fixed settings and no metadata (byte-deterministic for the same pixels)."""
    if img.mode not in ("RGB", "L"):
        raise ValueError(f"encode_png expects an RGB or L image, got mode {img.mode}")
    clean = Image.frombytes(img.mode, img.size, img.tobytes())  # drops info: ICC, dpi, exif
    buf = io.BytesIO()
    clean.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buf.getvalue()


def num_channels(img: Image.Image) -> int:
    """Channels of a decoded image as p2p sees them (L -> 1, RGB -> 3)."""
    return len(img.getbands())


# ----------------------------------------------------------------------------- internals


def _read_bytes(src: str | Path | bytes, name: str) -> bytes:
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src)
    p = Path(src)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{name}: is a directory, not an image file") from None
    except OSError as e:
        raise DataError(f"{name}: cannot read file ({e.strerror or e})") from None


def _decode(data: bytes, name: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # A decompression-bomb warning is not an error; the hard limit below is.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            if getattr(img, "n_frames", 1) > 1:
                raise DataError(
                    f"{name}: has {img.n_frames} frames (animation or multipage), expected one"
                )
            if fmt == "PNG":
                # verify() checks every chunk CRC, which load() skips; it needs a fresh handle.
                img.verify()
                img = Image.open(io.BytesIO(data))
            img.load()  # decode everything now: truncated data fails here
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(f"{name}: not an image (unrecognised or unsupported format)") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"{name}: image too large ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise DataError(f"{name}: corrupt or truncated image ({e})") from None
    return img


def to_channels(
    img: Image.Image,
    *,
    name: str,
    channels: int,
    gray_from_color: bool = False,
    notes: list[str] | None = None,
) -> Image.Image:
    """Apply the channel policy (module docstring) to a decoded image; DataError if rejected."""
    mode = img.mode
    src_mode = mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        img, mode = _from_16bit(img, name), "L"
    elif mode == "1":
        img, mode = img.convert("L"), "L"
    elif mode in ("CMYK", "YCbCr"):
        img, mode = img.convert("RGB"), "RGB"
    elif mode == "P":
        # Palette images may carry transparency; expand and let the alpha check decide.
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        alpha = np.asarray(img.getchannel("A"))
        if alpha.min() < 255:
            n = int((alpha < 255).sum())
            raise DataError(
                f"{name}: has real transparency ({n} of {alpha.size} pixels not opaque); "
                "flatten it onto a background first"
            )
        img = img.convert("RGB" if mode in ("RGBA", "PA", "RGBa") else "L")
        mode = img.mode
    if mode not in ("RGB", "L"):
        raise DataError(f"{name}: unsupported image mode {mode!r} (expected RGB or grayscale)")

    if channels == 3:
        out = img if mode == "RGB" else img.convert("RGB")
    elif mode == "L":
        out = img
    else:
        arr = np.asarray(img)  # (H, W, 3) uint8
        if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all():
            out = Image.fromarray(np.ascontiguousarray(arr[..., 0]))  # gray stored as colour
        elif gray_from_color:
            out = img.convert("L")
        else:
            out = None
    if out is not None:
        if notes is not None and src_mode != out.mode:
            notes.append(f"converted from mode {src_mode} to {out.mode}")
        return out
    raise DataError(
        f"{name}: has 3 colour channels, expected 1 (data.input_nc/output_nc is 1); "
        "convert it to grayscale or set the channel count to 3"
    )


def _from_16bit(img: Image.Image, name: str) -> Image.Image:
    arr = np.asarray(img).astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise DataError(f"{name}: 32-bit integer image with values outside 0..65535")
    # Scale the 16-bit range onto 8 bits, rounding to nearest.
    out = (arr * 255 + 32767) // 65535
    return Image.fromarray(out.astype(np.uint8))
