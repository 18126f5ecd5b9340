"""Slide readers, level choice and tissue detection on slides written at test time with tifffile.

Every reader is checked against the pixels the slide was made from (real photos and the
histology sample on white), and OpenSlide against tifffile on the same files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import openslide  # noqa: F401  (a .[dev] package: missing must fail)
import pytest
import tifffile
from PIL import Image

import slide_samples as samples
from vitkit.errors import (
    NoTissueError,
    SlideError,
    SlideFormatError,
    SlideLevelError,
    SlideReadError,
)
from vitkit.slides import SlideSettings, choose_geometry, open_slide, plan_slide
from vitkit.slides.readers.pillow_reader import PillowReader

# Regions that start outside, straddle the slide's edge, or lie inside (level-0 coordinates).
REGIONS = [(0, 0), (1250, 950), (600, 400), (-30, 500), (1290, 20)]


@pytest.fixture(scope="module")
def mosaic() -> tuple[np.ndarray, list[samples.Placed], list[np.ndarray]]:
    pixels, placed = samples.mosaic()
    return pixels, placed, samples.pyramid(pixels)


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory, mosaic: tuple) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("slides")
    levels = mosaic[2]
    plain = folder / "plain.png"
    Image.fromarray(levels[0]).save(plain)
    return {
        "tif": samples.write_tiff(folder / "mosaic.tif", levels),
        "svs": samples.write_svs(folder / "mosaic.svs", levels),
        "png": plain,
    }


@pytest.mark.parametrize("kind", ["tif", "svs"])
def test_pyramid_readers_return_the_pixels_the_slide_was_made_of(
    kind: str, slides: dict[str, Path], mosaic: tuple
) -> None:
    levels = mosaic[2]
    with open_slide(slides[kind]) as reader:
        assert reader.name == ("tifffile" if kind == "tif" else "openslide")
        assert [(lv.width, lv.height) for lv in reader.levels] == [
            (p.shape[1], p.shape[0]) for p in levels
        ]
        assert [lv.downsample for lv in reader.levels] == [1.0, 2.0, 4.0]
        assert reader.mpp == pytest.approx(samples.MPP)
        for level, pixels in enumerate(levels):
            for x, y in REGIONS:
                x, y = x >> level, y >> level
                region = reader.read(level, x, y, 100, 70)
                expected = np.full((70, 100, 3), 255, dtype=np.uint8)
                x0, y0 = max(x, 0), max(y, 0)
                part = pixels[y0 : y + 70, x0 : x + 100]
                expected[y0 - y : y0 - y + part.shape[0], x0 - x : x0 - x + part.shape[1]] = part
                np.testing.assert_array_equal(region, expected, err_msg=f"{level} {x} {y}")


def test_openslide_and_tifffile_agree_on_a_generic_tiff(slides: dict[str, Path]) -> None:
    with open_slide(slides["tif"], "openslide") as ours_os, open_slide(slides["tif"]) as ours_tf:
        assert ours_os.vendor == "generic-tiff"
        assert ours_os.mpp == pytest.approx(samples.MPP)  # from the centimetre resolution tags
        for level in range(3):
            np.testing.assert_array_equal(
                ours_os.read(level, 10, 20, 300, 200), ours_tf.read(level, 10, 20, 300, 200)
            )


def test_jpeg_tiles_decode_like_openslide(tmp_path: Path, mosaic: tuple) -> None:
    """JPEG-compressed tiles (as scanners write them) decode to OpenSlide's pixels."""
    import simplejpeg

    pixels = mosaic[2][1]
    tile = 128

    def encoded_tiles():  # written pre-compressed: tifffile's JPEG encoder needs imagecodecs
        for top in range(0, pixels.shape[0], tile):
            for left in range(0, pixels.shape[1], tile):
                block = samples.crop(pixels, left, top, tile)
                yield simplejpeg.encode_jpeg(block, quality=80, colorsubsampling="420")

    path = tmp_path / "jpeg.tif"
    tifffile.imwrite(
        path,
        encoded_tiles(),
        shape=pixels.shape,
        dtype=np.uint8,
        tile=(tile, tile),
        photometric="rgb",
        metadata=None,
    )
    with tifffile.TiffFile(path, mode="r+b") as tiff:
        tiff.pages[0].tags["Compression"].overwrite(7)  # JPEG
        tiff.pages[0].tags["PhotometricInterpretation"].overwrite(6)  # YCbCr
    with open_slide(path) as ours, open_slide(path, "openslide") as theirs:
        region = ours.read(0, 50, 60, 400, 300)
        np.testing.assert_array_equal(region, theirs.read(0, 50, 60, 400, 300))
        error = np.abs(region.astype(int) - samples.crop(pixels, 50, 60, 400)[:300]).mean()
        assert error < 3  # and close to the pixels before compression


def test_ome_tiff_with_subifd_pyramid_and_physical_size(tmp_path: Path, mosaic: tuple) -> None:
    levels = mosaic[2]
    path = tmp_path / "mosaic.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tiff:
        tiff.write(
            levels[0],
            subifds=2,
            tile=(128, 128),
            compression="zlib",
            photometric="rgb",
            metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm"},
        )
        for pixels in levels[1:]:
            tiff.write(
                pixels, subfiletype=1, tile=(128, 128), compression="zlib", photometric="rgb"
            )
    with open_slide(path) as reader:
        assert reader.vendor == "ome-tiff"
        assert len(reader.levels) == 3
        assert reader.mpp == pytest.approx(0.5)
        np.testing.assert_array_equal(reader.read(2, 0, 0, 325, 250), levels[2])


def test_striped_tiff_and_png(tmp_path: Path, slides: dict[str, Path], mosaic: tuple) -> None:
    level0 = mosaic[2][0]
    striped = tmp_path / "striped.tif"
    tifffile.imwrite(striped, level0, rowsperstrip=37, compression="zlib", photometric="rgb")
    for path in (striped, slides["png"]):
        with open_slide(path) as reader:
            assert len(reader.levels) == 1 and reader.mpp is None
            np.testing.assert_array_equal(
                reader.read(0, 1200, 900, 150, 150), samples.crop(level0, 1200, 900, 150)
            )


def test_png_pixel_bound_is_checked_before_decoding(slides: dict[str, Path]) -> None:
    with pytest.raises(SlideFormatError, match="pyramidal TIFF"):
        PillowReader(slides["png"], max_pixels=1000 * 1000)


# ---- choosing the level ---------------------------------------------------------------------------
def test_mpp_picks_the_coarsest_level_fine_enough(slides: dict[str, Path]) -> None:
    with open_slide(slides["tif"]) as reader:
        exact = choose_geometry(reader, tile_size=64, mpp=0.5)
        assert (exact.level, exact.read_size, exact.level0_size) == (1, 64, 128)
        near = choose_geometry(reader, tile_size=64, mpp=0.505)  # within 2%: no resizing
        assert (near.level, near.read_size) == (1, 64)
        between = choose_geometry(reader, tile_size=64, mpp=0.75, stride=32)
        assert (between.level, between.read_size, between.read_stride) == (1, 96, 48)
        with pytest.raises(SlideLevelError, match=r"finest level is 0\.25"):
            choose_geometry(reader, tile_size=64, mpp=0.1)
        with pytest.raises(SlideLevelError, match="no level 3; it has 3"):
            choose_geometry(reader, tile_size=64, level=3)
        with pytest.raises(SlideLevelError, match="does not fit in level 2"):
            choose_geometry(reader, tile_size=256, level=2)


def test_mpp_without_metadata_says_to_use_level(slides: dict[str, Path]) -> None:
    with open_slide(slides["png"]) as reader, pytest.raises(SlideLevelError, match="--level"):
        choose_geometry(reader, tile_size=64, mpp=0.5)


# ---- tissue ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("level", "min_tissue"), [(0, 0.5), (1, 0.1)])
def test_tiles_cover_the_pictures_and_never_bare_glass(
    level: int, min_tissue: float, slides: dict[str, Path], mosaic: tuple
) -> None:
    placed = mosaic[1]
    settings = SlideSettings(level=level, min_tissue=min_tissue, thumbnail_side=512)
    with open_slide(slides["tif"]) as reader:
        plan = plan_slide(reader, 64, settings)
    size = plan.geometry.level0_size
    run = set(zip(*(a.tolist() for a in plan.level0_xy()), strict=True))
    for picture in placed:  # every tile wholly inside a picture is run...
        inside = {
            (x, y)
            for y in range(0, samples.HEIGHT, size)
            for x in range(0, samples.WIDTH, size)
            if picture.contains(x, y, size)
        }
        assert inside <= run, picture.name
        assert inside or picture.name == "coffee"  # the corner is smaller than 2 tiles
    for x, y in run:  # ...and no tile that touches none
        assert any(picture.touches(x, y, size) for picture in placed), (x, y)
    # The coffee picture reaches the right and bottom edges: so do the tiles, whose part past
    # the edge is white (it counts as glass, so the last column runs when min_tissue is low).
    last = max(x for x, _ in run)
    assert last + size > samples.WIDTH if min_tissue < 0.3 else last + 2 * size > samples.WIDTH


def test_blank_slide_has_no_tissue(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(242, 2, (600, 700, 3)), 0, 255).astype(np.uint8)
    path = samples.write_tiff(tmp_path / "blank.tif", samples.pyramid(glass, 2))
    with open_slide(path) as reader, pytest.raises(NoTissueError, match="no tissue found"):
        plan_slide(reader, 64, SlideSettings())


# ---- bad files ------------------------------------------------------------------------------------
def test_bad_files_fail_with_one_clear_error(tmp_path: Path, slides: dict[str, Path]) -> None:
    truncated = tmp_path / "truncated.tif"
    data = slides["tif"].read_bytes()
    truncated.write_bytes(data[: len(data) * 2 // 3])
    text = tmp_path / "notes.svs"
    text.write_text("not a slide\n")
    unknown = tmp_path / "data.bin"
    unknown.write_bytes(b"\x00\x01binary" * 100)
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    expected = {
        truncated: (SlideReadError, "truncated"),
        text: (SlideFormatError, "not a slide format OpenSlide reads"),
        unknown: (SlideFormatError, "not a slide format vitkit reads"),
        empty: (SlideFormatError, "empty file"),
        tmp_path / "missing.tif": (SlideError, "no such file"),
    }
    for path, (kind, message) in expected.items():
        with pytest.raises(kind, match=message) as caught:
            open_slide(path).close()
        assert str(path) in str(caught.value)


def test_corrupt_tile_is_reported_on_read(tmp_path: Path, slides: dict[str, Path]) -> None:
    corrupt = tmp_path / "corrupt.tif"
    shutil.copy(slides["tif"], corrupt)
    with tifffile.TiffFile(corrupt) as tiff:
        offset = tiff.pages[0].dataoffsets[5]
    with open(corrupt, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xde\xad\xbe\xef" * 64)
    with open_slide(corrupt) as reader:
        reader.read(0, 0, 0, 64, 64)  # tile 0 is fine
        with pytest.raises(SlideReadError, match="tile 5 of level 0 is corrupt"):
            reader.read(0, 5 * samples.STORE_TILE, 0, 64, 64)


def test_cli_reader_choices_match_the_library() -> None:
    from vitkit.cli import build_parser
    from vitkit.slides import READERS

    slide = build_parser()._subparsers._group_actions[0].choices["slide"]  # type: ignore[union-attr]
    reader = next(a for a in slide._actions if "--reader" in a.option_strings)
    assert tuple(reader.choices or ()) == READERS
