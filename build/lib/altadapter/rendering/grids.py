"""Image grids: a prompt's samples side by side, and the labelled comparison (tuned rows above the original)."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
GAP = (128, 128, 128)


def image_grid(images: Sequence[Image.Image], cols: int | None = None, *, gap: int = 0) -> Image.Image:
    """Equal-sized images tiled row by row, `cols` per row (default: all in one row), `gap` pixels apart."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    cols = cols or len(images)
    rows = -(-len(images) // cols)  # ceiling division
    width, height = images[0].size
    size = (cols * (width + gap) - gap, rows * (height + gap) - gap)
    grid = Image.new("RGB", size, BACKGROUND if gap == 0 else GAP)
    for index, image in enumerate(images):
        grid.paste(image, ((index % cols) * (width + gap), (index // cols) * (height + gap)))
    return grid


def labelled_rows(rows: Sequence[tuple[str, Sequence[Image.Image]]]) -> Image.Image:
    """One row of images per (label, images), the labels drawn in a column on the left."""
    if not rows:
        raise ValueError("labelled_rows needs at least one row")
    tile_width, tile_height = rows[0][1][0].size
    # Pillow's built-in scalable font, sized to the tiles, so no font file has to be found.
    font = ImageFont.load_default(size=max(10, tile_height // 10))
    margin = max(4, tile_height // 20)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max(int(measure.textlength(label, font=font)) for label, _ in rows) + 2 * margin
    cols = max(len(images) for _, images in rows)
    canvas = Image.new("RGB", (label_width + cols * tile_width, len(rows) * tile_height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for index, (label, images) in enumerate(rows):
        top = index * tile_height
        canvas.paste(image_grid(images), (label_width, top))
        draw.text((margin, top + tile_height // 2), label, fill=INK, font=font, anchor="lm")
    return canvas
