"""Preview: a PNG grid of several scenes, and the command line.

``python -m mars_jax.data.synth --preview grid.png [--seed S --count N --size PX --panel PX
--colours 256]`` writes a picture of several scenes (optical, SAR, land cover, height, second
date, damage).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mars_jax.data.synth.api import render_pair
from mars_jax.data.synth.constants import CLASS_NAMES, DAMAGE_NAMES

_DESCRIPTION = ("SynthVHR: procedural very-high-resolution optical + SAR scene pairs with ground "
                "truth.")

LANDCOVER_COLOURS = np.array([[176, 140, 100], [150, 200, 90], [30, 110, 40], [40, 90, 200],
                              [90, 90, 90], [220, 60, 50], [250, 220, 40]], np.uint8)
DAMAGE_COLOURS = np.array([[0, 0, 0], [60, 180, 75], [255, 200, 40], [220, 40, 40],
                           [70, 140, 255]], np.uint8)
_PREVIEW_DB_RANGE = (-25.0, 5.0)


def _grey(db: np.ndarray) -> np.ndarray:
    low, high = _PREVIEW_DB_RANGE
    return np.repeat((np.clip((db - low) / (high - low), 0, 1) * 255).astype(np.uint8), 3, -1)


def _height_colours(height: np.ndarray, top: float = 40.0) -> np.ndarray:
    """Dark blue (0 m) through orange to white (``top`` metres and above)."""
    stops = np.array([[20, 20, 40], [70, 40, 160], [220, 80, 60], [250, 200, 80],
                      [255, 255, 255]], float)
    position = np.clip(height / top, 0, 1) * (len(stops) - 1)
    channels = [np.interp(position, np.arange(len(stops)), stops[:, c]) for c in range(3)]
    return np.stack(channels, -1).astype(np.uint8)


def _blank(example: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.zeros_like(example["optical"])


# (title, picture of an example, whether to resize it smoothly rather than as labels)
_PREVIEW_COLUMNS = (
    ("optical", lambda e: e["optical"], True),
    ("SAR dB [-25, 5]", lambda e: _grey(e["sar"]), True),
    ("land cover", lambda e: LANDCOVER_COLOURS[e["landcover"]], False),
    ("height (0-40 m)", lambda e: _height_colours(e["height"]), False),
    ("optical t2", lambda e: e["optical_t2"] if "optical_t2" in e else _blank(e), True),
    ("SAR t2", lambda e: _grey(e["sar_t2"]) if "sar_t2" in e else _blank(e), True),
    ("damage t2", lambda e: DAMAGE_COLOURS[e["damage"]] if "damage" in e else _blank(e), False),
)


def _caption(seed: int, index: int, example: Mapping[str, np.ndarray]) -> str:
    value = lambda name: float(example[name])
    return (f"seed {seed} index {index}: gsd {value('gsd'):.2f} m, sun az "
            f"{value('sun_azimuth'):.0f} el {value('sun_elevation'):.0f}, look az "
            f"{value('look_azimuth'):.0f} inc {value('incidence'):.0f}, L {value('looks'):.1f}, "
            f"{len(example['boxes'])} objects")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def preview(path: str | Path, seed: int = 0, count: int = 4, size: int = 256,
            panel: int = 192, colours: int | None = None) -> Path:
    """Writes a PNG grid: one row per scene (``render_pair(seed, row, size)``), the columns of
    ``_PREVIEW_COLUMNS``, legends below; ``colours`` quantises it to an adaptive palette
    (a third of the bytes at 256)."""
    font, gap, line = _font(12), 4, 18
    row_height = panel + line + gap
    sheet = Image.new("RGB", (len(_PREVIEW_COLUMNS) * (panel + gap) + gap,
                              line + count * row_height + 2 * line + gap), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for column, (title, _, _) in enumerate(_PREVIEW_COLUMNS):
        draw.text((gap + column * (panel + gap), 2), title, fill=(0, 0, 0), font=font)
    for row in range(count):
        example = render_pair(seed, row, size)
        top = line + row * row_height
        for column, (_, picture, smooth) in enumerate(_PREVIEW_COLUMNS):
            image = Image.fromarray(picture(example)).resize(
                (panel, panel), Image.BILINEAR if smooth else Image.NEAREST)
            sheet.paste(image, (gap + column * (panel + gap), top))
        draw.text((gap, top + panel + 1), _caption(seed, row, example), fill=(0, 0, 0),
                  font=font)
    bottom = line + count * row_height
    _legend(draw, font, (gap, bottom), "land cover:", CLASS_NAMES, LANDCOVER_COLOURS)
    _legend(draw, font, (gap, bottom + line), "damage:", DAMAGE_NAMES, DAMAGE_COLOURS)
    if colours is not None:
        sheet = sheet.quantize(colours, method=Image.Quantize.MEDIANCUT)
    path = Path(path)
    sheet.save(path, optimize=True)
    return path


def _legend(draw: ImageDraw.ImageDraw, font: Any, origin: tuple[int, int], title: str,
            names: Sequence[str], colours: np.ndarray) -> None:
    x, y = origin
    draw.text((x, y), title, fill=(0, 0, 0), font=font)
    x += 80
    for name, colour in zip(names, colours, strict=True):
        draw.rectangle([x, y + 2, x + 12, y + 14], fill=tuple(int(c) for c in colour),
                       outline=(0, 0, 0))
        draw.text((x + 16, y), name, fill=(0, 0, 0), font=font)
        x += 24 + int(draw.textlength(name, font=font))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mars_jax.data.synth", description=_DESCRIPTION)
    parser.add_argument("--preview", required=True, help="PNG file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=4, help="scenes (rows)")
    parser.add_argument("--size", type=int, default=256, help="scene size in pixels")
    parser.add_argument("--panel", type=int, default=192, help="panel size in the grid")
    parser.add_argument("--colours", type=int, default=None,
                        help="quantise to this many colours (smaller file)")
    args = parser.parse_args(argv)
    path = preview(args.preview, args.seed, args.count, args.size, args.panel, args.colours)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
