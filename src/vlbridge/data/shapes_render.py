"""Drawing of shapes-world scenes with PIL, clean or under a distribution shift.

`render_scene(scene, image_size, shift=None)` draws the scene at `supersample` x the target
size and box-downsamples it (anti-aliasing), so even 64 px shapes keep crisp, recognisable
outlines. Each shape is a fixed polygon in unit coordinates (circumradius 1), scaled to the
object's size and placed at its centre.

Shifts (`SHIFTS`) keep the scene and the image size and change only the look:
  - "sketch": outlines only, no fill
  - "noisy":  a random smooth texture behind the shapes plus per-pixel noise over all
  - "blur":   Gaussian blur and a low-resolution round trip (downsample, upsample)
  - "invert": inverted colours
Everything is deterministic: the "noisy" texture comes from `scene.texture_seed`.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from vlbridge.data.shapes_scene import RADIUS, Scene

SHIFTS = ("sketch", "noisy", "blur", "invert")

COLOUR_RGB = {
    "red": (215, 30, 35),
    "green": (35, 150, 50),
    "blue": (30, 70, 215),
    "yellow": (245, 205, 10),
    "purple": (135, 45, 175),
    "orange": (250, 125, 10),
    "brown": (125, 75, 30),
    "black": (25, 25, 25),
}
BACKGROUND_RGB = {
    "white": (255, 255, 255),
    "light grey": (222, 222, 222),
    "cream": (250, 243, 222),
    "pale blue": (220, 233, 250),
    "pale green": (225, 245, 225),
}


def _regular(n_points: int, radii: tuple[float, ...], start_deg: float) -> list[tuple[float, float]]:
    """Points on circles of alternating `radii`, evenly spaced, from angle `start_deg` (y down)."""
    points = []
    for i in range(n_points):
        angle = math.radians(start_deg + 360.0 * i / n_points)
        radius = radii[i % len(radii)]
        points.append((radius * math.cos(angle), radius * math.sin(angle)))
    return points


def _cross(half_width: float = 0.32, arm: float = 0.9) -> list[tuple[float, float]]:
    w, a = half_width, arm
    return [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w)]


def _heart(n_points: int = 48) -> list[tuple[float, float]]:
    """The classic parametric heart, rescaled so its bounding box spans [-0.92, 0.92]."""
    raw = []
    for i in range(n_points):
        t = 2 * math.pi * i / n_points
        x = 16 * math.sin(t) ** 3
        y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
        raw.append((x, y))
    xs, ys = [p[0] for p in raw], [p[1] for p in raw]
    mid_x, mid_y = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    half = max(max(xs) - min(xs), max(ys) - min(ys)) / 2
    return [(0.92 * (x - mid_x) / half, 0.92 * (y - mid_y) / half) for x, y in raw]


# Unit polygons (circumradius about 1, y pointing down) of every shape.
UNIT_POLYGONS = {
    "circle": _regular(64, (0.92,), 0.0),
    "square": [(-0.75, -0.75), (0.75, -0.75), (0.75, 0.75), (-0.75, 0.75)],
    "triangle": [(x, y + 0.15) for x, y in _regular(3, (1.1,), -90.0)],
    "star": _regular(10, (1.0, 0.45), -90.0),
    "hexagon": _regular(6, (0.95,), 0.0),
    "cross": _cross(),
    "heart": _heart(),
    "diamond": [(0.0, -1.0), (0.68, 0.0), (0.0, 1.0), (-0.68, 0.0)],
}


def render_scene(
    scene: Scene, image_size: int = 64, shift: str | None = None, supersample: int = 2, draw_objects=None
) -> Image.Image:
    """RGB image of `scene`, `image_size` pixels square, under `shift` (None = clean).

    `draw_objects(canvas, scene, outline_only)` paints the objects on the supersampled canvas
    (default: the shapes world's polygons); the objects world passes its own.
    """
    if shift is not None and shift not in SHIFTS:
        raise ValueError(f"shift must be None or one of {SHIFTS}, got {shift!r}")
    canvas_size = image_size * supersample
    noise_rng = np.random.default_rng(scene.texture_seed) if shift == "noisy" else None
    if noise_rng is not None:
        canvas = _textured_background(noise_rng, scene.background, canvas_size)
    else:
        canvas = Image.new("RGB", (canvas_size, canvas_size), BACKGROUND_RGB[scene.background])
    (draw_objects or draw_shapes)(canvas, scene, outline_only=shift == "sketch")
    image = canvas.reduce(supersample) if supersample > 1 else canvas  # (S, S) box-filtered
    if noise_rng is not None:
        image = _add_pixel_noise(image, noise_rng, std=12.0)
    elif shift == "blur":
        image = _blur(image)
    elif shift == "invert":
        image = ImageOps.invert(image)
    return image


def draw_shapes(canvas: Image.Image, scene: Scene, outline_only: bool) -> None:
    """Paint every object of `scene` (shapes-world objects) onto `canvas`."""
    for obj in scene.objects:
        draw_shape(canvas, obj, outline_only)


def draw_shape(canvas: Image.Image, obj, outline_only: bool) -> None:
    """One coloured shape (`SceneObject`) as a filled polygon, or its outline for the sketch shift."""
    side = canvas.size[0]
    line_width = max(2, round(side / 48))  # sketch stroke: about 1.3 px after downsampling
    radius = RADIUS[obj.size] * side
    centre_x, centre_y = obj.x * side, obj.y * side
    points = [(centre_x + radius * ux, centre_y + radius * uy) for ux, uy in UNIT_POLYGONS[obj.shape]]
    rgb = COLOUR_RGB[obj.colour]
    if outline_only:
        ImageDraw.Draw(canvas).polygon(points, outline=rgb, width=line_width)
    else:
        ImageDraw.Draw(canvas).polygon(points, fill=rgb)


def _textured_background(rng: np.random.Generator, background: str, side: int) -> Image.Image:
    """The background colour plus a smooth random colour texture (upsampled 6x6 noise)."""
    coarse = rng.normal(0.0, 40.0, size=(6, 6, 3)) + np.asarray(BACKGROUND_RGB[background])  # (6, 6, 3)
    coarse_image = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8), "RGB")
    return coarse_image.resize((side, side), Image.Resampling.BICUBIC)  # (side, side) smooth texture


def _add_pixel_noise(image: Image.Image, rng: np.random.Generator, std: float) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32)  # (S, S, 3)
    pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * np.float32(std)
    np.rint(pixels, out=pixels)
    np.clip(pixels, 0, 255, out=pixels)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def _blur(image: Image.Image) -> Image.Image:
    size = image.size[0]
    blurred = image.filter(ImageFilter.GaussianBlur(radius=size / 48))
    low = max(8, size // 3)
    small = blurred.resize((low, low), Image.Resampling.BILINEAR)  # (low, low)
    return small.resize((size, size), Image.Resampling.BILINEAR)  # back to (size, size)
