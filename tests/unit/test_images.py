"""open_image: full decode, explicit channel policy, errors naming the file; encode_png."""

from __future__ import annotations

import io

import numpy as np
import pytest
from data_fixtures import noise, png_bytes, save
from PIL import Image

from p2p.data.images import IMAGE_EXTENSIONS, encode_png, is_image_file, open_image
from p2p.errors import DataError


def test_rgb_roundtrip_is_exact(tmp_path):
    arr = noise(12, 10, seed=0)
    img = open_image(save(tmp_path / "x.png", arr), name="x.png", channels=3)
    assert img.mode == "RGB" and img.size == (10, 12)
    assert np.array_equal(np.asarray(img), arr)


def test_gray_becomes_rgb_when_3_channels_and_is_noted():
    gray = noise(8, 8, seed=1, channels=1)
    notes: list[str] = []
    img = open_image(png_bytes(gray), name="g.png", channels=3, notes=notes)
    assert img.mode == "RGB"
    assert all(np.array_equal(np.asarray(img)[..., c], gray) for c in range(3))
    assert notes == ["converted from mode L to RGB"]


def test_opaque_rgba_converted_transparent_rejected():
    rgb = noise(8, 8, seed=2)
    opaque = np.concatenate([rgb, np.full((8, 8, 1), 255, np.uint8)], axis=2)
    img = open_image(png_bytes(opaque), name="o.png", channels=3)
    assert img.mode == "RGB" and np.array_equal(np.asarray(img), rgb)

    holey = opaque.copy()
    holey[0, 0, 3] = 10
    with pytest.raises(DataError, match=r"^h\.png: has real transparency \(1 of 64"):
        open_image(png_bytes(holey), name="h.png", channels=3)


def test_palette_with_transparency_rejected_plain_palette_converted():
    p = Image.fromarray(noise(8, 8, seed=3)).convert("P")
    buf = io.BytesIO()
    p.save(buf, format="PNG")
    assert open_image(buf.getvalue(), name="p.png", channels=3).mode == "RGB"
    p.info["transparency"] = int(np.asarray(p)[0, 0])
    buf = io.BytesIO()
    p.save(buf, format="PNG", transparency=p.info["transparency"])
    with pytest.raises(DataError, match="transparency"):
        open_image(buf.getvalue(), name="p.png", channels=3)


def test_one_channel_policy():
    gray = noise(8, 8, seed=4, channels=1)
    assert open_image(png_bytes(gray), name="g", channels=1).mode == "L"
    # a gray image stored as RGB is accepted losslessly
    as_rgb = np.repeat(gray[..., None], 3, axis=2)
    img = open_image(png_bytes(as_rgb), name="g3", channels=1)
    assert img.mode == "L" and np.array_equal(np.asarray(img), gray)
    # a real colour image is rejected, unless conversion is asked for
    colour = noise(8, 8, seed=5)
    with pytest.raises(DataError, match=r"^c\.png: has 3 colour channels, expected 1"):
        open_image(png_bytes(colour), name="c.png", channels=1)
    assert open_image(png_bytes(colour), name="c", channels=1, gray_from_color=True).mode == "L"


def test_16bit_scaled_to_8bit():
    arr = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    img = Image.fromarray(arr)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    out = open_image(buf.getvalue(), name="d16.png", channels=1)
    assert out.mode == "L"
    assert np.asarray(out).tolist() == [[0, 1, 128, 255]]
    assert open_image(buf.getvalue(), name="d16.png", channels=3).mode == "RGB"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF"])
def test_truncated_file_rejected(tmp_path, fmt):
    buf = io.BytesIO()
    Image.fromarray(noise(64, 64, seed=6)).save(buf, format=fmt)
    data = buf.getvalue()
    path = tmp_path / f"t.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"^{path}: corrupt or truncated image"):
        open_image(path, name=str(path), channels=3)


def test_png_with_bad_crc_rejected():
    data = bytearray(png_bytes(noise(32, 32, seed=7)))
    i = data.index(b"IDAT") + 10  # flip a byte inside the compressed pixels
    data[i] ^= 0xFF
    with pytest.raises(DataError, match=r"^bad\.png: corrupt or truncated image"):
        open_image(bytes(data), name="bad.png", channels=3)


def test_non_image_empty_missing_and_directory(tmp_path):
    txt = tmp_path / "notes.png"
    txt.write_text("not pixels")
    with pytest.raises(DataError, match=r"notes\.png: not an image"):
        open_image(txt, name=str(txt), channels=3)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png: empty file \(0 bytes\)"):
        open_image(empty, name=str(empty), channels=3)
    with pytest.raises(DataError, match=r"nope\.png: file not found"):
        open_image(tmp_path / "nope.png", name=str(tmp_path / "nope.png"), channels=3)
    with pytest.raises(DataError, match="is a directory"):
        open_image(tmp_path, name=str(tmp_path), channels=3)


def test_multiframe_rejected():
    frames = [Image.fromarray(noise(8, 8, seed=s)) for s in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    with pytest.raises(DataError, match="has 3 frames"):
        open_image(buf.getvalue(), name="m.tif", channels=3)


def test_encode_png_deterministic_and_strips_metadata():
    img = Image.fromarray(noise(16, 16, seed=8))
    img.info["icc_profile"] = b"fake profile"
    a, b = encode_png(img), encode_png(img.copy())
    assert a == b
    assert b"iCCP" not in a and b"tIME" not in a and b"tEXt" not in a
    back = Image.open(io.BytesIO(a))
    assert np.array_equal(np.asarray(back), np.asarray(img))


def test_image_extensions_any_case():
    assert {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff"} == set(IMAGE_EXTENSIONS)
    assert is_image_file("X.JPG") and is_image_file("a.TiFf") and not is_image_file("a.txt")


def _jpeg_with_orientation(arr: np.ndarray, orientation: int) -> bytes:
    """A JPEG whose EXIF Orientation tag asks viewers to rotate it (6: 90 degrees clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def test_exif_orientation_is_applied_by_default(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)  # 20 wide, 10 high; left half dark, right half bright
    arr[:, 10:] = 250
    path = tmp_path / "portrait.jpg"
    path.write_bytes(_jpeg_with_orientation(arr, 6))
    img = open_image(path, name="portrait.jpg", channels=3)  # what import and predict call
    assert img.size == (10, 20)  # rotated upright: 10 wide, 20 high
    # orientation 6 = rotate 90 degrees clockwise: the bright right half ends up at the bottom
    out = np.asarray(img).mean(axis=(1, 2))
    assert out[:8].max() < 40 and out[12:].min() > 200
    raw = open_image(path, name="portrait.jpg", channels=3, exif_transpose=False)
    assert raw.size == (20, 10)
