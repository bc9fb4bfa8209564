"""DICOM to training image: rescale, window, MONOCHROME1, frames, codecs, colour, failures."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from hashbench.data.dicom import ImageOptions, SkippedFile, decode, window_linear
from hashbench.data.images import decode_file

NATIVE = ImageOptions(size=16)  # same size as the test images: no resampling, exact pixels


def decoded(path, options=NATIVE):
    return decode(path.read_bytes(), options)


def test_ct_rescale_and_window_give_the_hand_computed_grey_levels(tmp_path, dicom):
    # Stored values with intercept -1024: 1024 -> 0 HU, 1124 -> 100 HU, 864 -> -160 HU, 1264 -> 240 HU.
    stored = np.full((16, 16), 1024, np.uint16)
    stored[0, 0], stored[0, 1], stored[0, 2], stored[0, 3] = 1124, 864, 1264, 1064
    path = dicom(tmp_path / "ct.dcm", stored, RescaleIntercept=-1024, RescaleSlope=1, WindowCenter=40, WindowWidth=400)
    image = decoded(path).images[0]
    # DICOM LINEAR window: ((x - (c - 0.5)) / (w - 1) + 0.5) * 255, clipped.
    assert image[0, 0] == round(((100 - 39.5) / 399 + 0.5) * 255) == 166
    assert image[0, 1] == 0  # -160 HU: the window's lower edge
    assert image[0, 2] == 255  # 240 HU: above the window
    assert image[0, 3] == round(((40 - 39.5) / 399 + 0.5) * 255) == 128  # the centre
    assert image[5, 5] == round(((0 - 39.5) / 399 + 0.5) * 255) == 102


def test_rescale_slope_applies_before_the_window(tmp_path, dicom):
    stored = np.full((16, 16), 100, np.uint16)  # slope 2, intercept -100 -> 100 HU
    path = dicom(tmp_path / "ct.dcm", stored, RescaleIntercept=-100, RescaleSlope=2, WindowCenter=40, WindowWidth=400)
    assert decoded(path).images[0][0, 0] == 166


def test_ct_without_window_tags_uses_the_soft_tissue_default(tmp_path, dicom):
    stored = np.full((16, 16), 1124, np.uint16)
    path = dicom(tmp_path / "ct.dcm", stored, RescaleIntercept=-1024, RescaleSlope=1)
    assert decoded(path).images[0][0, 0] == 166


def test_multi_valued_window_takes_the_first_preset(tmp_path, dicom):
    stored = np.full((16, 16), 1124, np.uint16)
    path = dicom(
        tmp_path / "ct.dcm",
        stored,
        RescaleIntercept=-1024,
        RescaleSlope=1,
        WindowCenter=[40, -600],
        WindowWidth=[400, 1500],
    )
    assert decoded(path).images[0][0, 0] == 166


def test_mr_without_window_is_windowed_by_percentiles(tmp_path, dicom, ramp_image):
    path = dicom(tmp_path / "mr.dcm", ramp_image(), modality="MR")
    image = decoded(path).images[0]
    assert image.min() == 0 and image.max() == 255
    assert np.all(np.diff(image.reshape(-1).astype(int)) >= 0)  # monotone in the stored value


def test_monochrome1_comes_out_inverted(tmp_path, dicom, ramp_image):
    pixels = ramp_image()
    normal = decoded(dicom(tmp_path / "m2.dcm", pixels, modality="MR", WindowCenter=1000, WindowWidth=2000)).images[0]
    inverted = decoded(
        dicom(
            tmp_path / "m1.dcm", pixels, modality="MR", photometric="MONOCHROME1", WindowCenter=1000, WindowWidth=2000
        )
    ).images[0]
    np.testing.assert_array_equal(inverted, 255 - normal)
    assert normal[0, 0] == 0 and inverted[0, 0] == 255  # the lowest stored value is white in MONOCHROME1


def test_multi_frame_gives_one_slice_per_frame(tmp_path, dicom):
    frames = np.stack([np.full((16, 16), v, np.uint16) for v in (1024, 1124, 1264)])
    path = dicom(tmp_path / "mf.dcm", frames, RescaleIntercept=-1024, RescaleSlope=1, WindowCenter=40, WindowWidth=400)
    images = decoded(path).images
    assert [int(i[0, 0]) for i in images] == [102, 166, 255]


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEGLSLossless, RLELossless], ids=["jpeg2000", "jpeg-ls", "rle"])
def test_compressed_files_decode_like_the_uncompressed_original(tmp_path, dicom, ramp_image, syntax):
    pixels = ramp_image(32, 32, 0, 4000)
    tags = dict(modality="MR", WindowCenter=2000, WindowWidth=4000)
    plain = decoded(dicom(tmp_path / "plain.dcm", pixels, **tags), ImageOptions(size=32)).images[0]
    packed = decoded(dicom(tmp_path / "packed.dcm", pixels, compress=syntax, **tags), ImageOptions(size=32)).images[0]
    np.testing.assert_array_equal(packed, plain)


def test_rgb_becomes_bt601_grey_or_is_skipped_on_request(tmp_path, dicom):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 200
    path = dicom(tmp_path / "rgb.dcm", rgb, modality="OT", photometric="RGB")
    assert decoded(path).images[0][0, 0] == round(0.299 * 200) == 60
    with pytest.raises(SkippedFile, match="colour image"):
        decoded(path, ImageOptions(size=16, colour="skip"))


def test_resize_keeps_aspect_by_padding(tmp_path, dicom):
    pixels = np.full((16, 32), 1124, np.uint16)  # wide image, all 100 HU
    path = dicom(
        tmp_path / "wide.dcm", pixels, RescaleIntercept=-1024, RescaleSlope=1, WindowCenter=40, WindowWidth=400
    )
    padded = decoded(path, ImageOptions(size=32)).images[0]
    assert padded.shape == (32, 32)
    assert padded[0, 16] == 0 and padded[16, 16] == 166  # black bands above and below
    stretched = decoded(path, ImageOptions(size=32, aspect="stretch")).images[0]
    assert (stretched == 166).all()


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p, d: p.write_bytes(b""), "empty file"),
        (lambda p, d: p.write_text("patient notes, not an image\n"), "not DICOM"),
        (lambda p, d: d(p, np.zeros((16, 16), np.uint8), modality="SEG"), "non-image object"),
    ],
    ids=["empty", "text", "seg"],
)
def test_unusable_files_raise_a_skip_with_a_reason(tmp_path, dicom, make, reason):
    path = tmp_path / "bad.dcm"
    make(path, dicom)
    with pytest.raises(SkippedFile) as caught:
        decoded(path)
    assert caught.value.reason == reason


@pytest.mark.parametrize("compress", [None, RLELossless, JPEG2000Lossless], ids=["native", "rle", "jpeg2000"])
def test_a_file_cut_anywhere_says_where_it_was_cut_and_prints_nothing(tmp_path, dicom, compress, capfd):
    """An interrupted download, the commonest fault with real data: each cut gets the reason that says so."""
    noise = np.random.default_rng(0).integers(0, 4000, (64, 64)).astype(np.uint16)
    data = dicom(tmp_path / "whole.dcm", noise, compress=compress).read_bytes()
    pixels = data.index(b"\xe0\x7f\x10\x00")  # the (7FE0,0010) Pixel Data tag
    sop_class = data.index(b"\x08\x00\x16\x00")  # (0008,0016) SOP Class UID, the object's first tags
    cuts = {
        150: "truncated header",  # inside the file meta
        sop_class + 40: "truncated file",  # the object's header, before its pixels
        pixels: "truncated file",
        pixels + 40: "truncated pixel data",
        (pixels + len(data)) // 2: "truncated pixel data",
        len(data) - 12: "truncated pixel data",
    }
    for cut, reason in cuts.items():
        with pytest.raises(SkippedFile) as caught:
            decode(data[:cut], NATIVE)
        assert caught.value.reason == reason, (cut, caught.value)
        assert "download it again" in caught.value.detail
    assert capfd.readouterr().err == ""  # the parser's own warnings are kept out of the terminal


def test_a_truncated_jpeg2000_stream_is_skipped(tmp_path, dicom, truncate_codestream):
    noise = np.random.default_rng(0).integers(0, 4000, (64, 64)).astype(np.uint16)
    path = truncate_codestream(dicom(tmp_path / "j2k.dcm", noise, modality="MR", compress=JPEG2000Lossless))
    with pytest.raises(SkippedFile) as caught:
        decoded(path)
    assert caught.value.reason == "undecodable pixel data"


def test_a_header_declaring_more_pixels_than_the_limit_is_skipped_with_the_count_and_the_fix(tmp_path, dicom):
    frames = dicom(tmp_path / "frames.dcm", np.zeros((3, 16, 16), np.uint16), modality="MR").read_bytes()
    with pytest.raises(SkippedFile) as caught:
        decode(frames, NATIVE, max_pixels=16 * 16 * 3 - 1)
    assert (caught.value.reason, caught.value.detail) == (
        "too many pixels",
        "declares 16 x 16 pixels x 3 frames (7.7e2), above the limit 767; raise it with --max-pixels",
    )
    assert len(decode(frames, NATIVE, max_pixels=16 * 16 * 3).images) == 3
    colour = dicom(tmp_path / "rgb.dcm", np.zeros((16, 16, 3), np.uint8), photometric="RGB").read_bytes()
    with pytest.raises(SkippedFile, match=r"declares 16 x 16 pixels x 3 samples \(7.7e2\), above the limit 700;"):
        decode(colour, NATIVE, max_pixels=700)


def test_image_files_count_every_page_against_the_limit_before_reading_it(tmp_path):
    pages = [Image.fromarray(np.full((10, 12), v, np.uint8)) for v in (30, 60)]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    data = (tmp_path / "pages.tif").read_bytes()
    with pytest.raises(SkippedFile) as caught:
        decode_file(tmp_path / "pages.tif", data, NATIVE, max_pixels=239)
    assert (
        caught.value.detail
        == "declares 12 x 10 pixels x 2 pages (2.4e2), above the limit 239; raise it with --max-pixels"
    )
    assert len(decode_file(tmp_path / "pages.tif", data, NATIVE, max_pixels=240).images) == 2
    small_then_large = [Image.fromarray(np.zeros(side, np.uint8)) for side in ((4, 4), (40, 40))]
    small_then_large[0].save(tmp_path / "grows.tif", save_all=True, append_images=small_then_large[1:])
    with pytest.raises(SkippedFile, match="declares 40 x 40 pixels x 2 pages"):  # its first page alone passes
        decode_file(tmp_path / "grows.tif", (tmp_path / "grows.tif").read_bytes(), NATIVE, max_pixels=1000)


def test_window_linear_is_clipped_and_monotone():
    values = np.arange(-300, 400, dtype=np.float64)
    out = window_linear(values, 40, 400)
    assert out.dtype == np.uint8 and out[0] == 0 and out[-1] == 255
    assert np.all(np.diff(out.astype(int)) >= 0)


def test_image_options_reject_unknown_choices():
    with pytest.raises(ValueError, match="valid: auto, percentile, minmax"):
        ImageOptions(window="bone")


@pytest.mark.parametrize("name", ["examples_palette.dcm", "examples_ybr_color.dcm", "SC_rgb_rle_2frame.dcm"])
def test_pydicoms_colour_samples_become_grey_slices(name):
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    with open(path, "rb") as handle:
        slices = decode(handle.read(), ImageOptions(size=32))
    assert slices.images and all(image.shape == (32, 32) and image.dtype == np.uint8 for image in slices.images)
    assert max(int(image.max()) - int(image.min()) for image in slices.images) > 50  # real content, not a flat grey
