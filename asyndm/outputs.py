"""The sampler's picture and array files in a run folder: images, latents and mask overlays, each
written atomically (asyndm/run_folder.py)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from .run_folder import atomic_write_bytes

# Item colours of the mask overlay (RGB), cycled for more items.
MASK_COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def save_image(path: Path, image: Image.Image) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def save_array(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write_bytes(path, buffer.getvalue())


def mask_overlay(image: Image.Image, assignment: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The image with each item's region tinted in its colour; background untouched.

    ``assignment`` is the (h, w) item index per latent pixel (-1 background), upsampled by nearest.
    """
    labels = Image.fromarray((assignment + 1).astype(np.uint8)).resize(image.size, Image.NEAREST)
    labels = np.asarray(labels).astype(int) - 1
    pixels = np.asarray(image.convert("RGB")).astype(np.float32)
    for item in range(labels.max() + 1):
        colour = np.array(MASK_COLOURS[item % len(MASK_COLOURS)], dtype=np.float32)
        region = labels == item
        pixels[region] = (1 - alpha) * pixels[region] + alpha * colour
    return Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8))


# ------------------------------------------------------------------ videos

VIDEO_FPS = 16  # Wan 2.1's frame rate (the rate its examples export at)


def video_format() -> str:
    """``mp4`` where an H.264 encoder is installed (imageio-ffmpeg, the ``video`` extra), else ``gif`` (Pillow)."""
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return "gif"
    return "mp4"


def encode_video(frames: list[Image.Image], extension: str, fps: int = VIDEO_FPS) -> bytes:
    """The frames as an MP4 (H.264, yuv420p: plays in browsers and wandb) or an endlessly looping GIF."""
    if extension == "gif":
        buffer = io.BytesIO()
        frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=round(1000 / fps),
                       loop=0)
        return buffer.getvalue()
    import tempfile

    import imageio_ffmpeg

    width, height = frames[0].size
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "video.mp4"
        # macro_block_size 2: yuv420p needs even sides; the frames' own size is kept (multiples of 16 here)
        writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, codec="libx264",
                                             pix_fmt_out="yuv420p", macro_block_size=2, quality=8,
                                             ffmpeg_log_level="error")
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(np.asarray(frame.convert("RGB"))))
        writer.close()
        return path.read_bytes()


def save_video(path: Path, frames: list[Image.Image], fps: int = VIDEO_FPS) -> None:
    atomic_write_bytes(path, encode_video(frames, Path(path).suffix.lstrip("."), fps))


def key_frames(frames: list[Image.Image]) -> Image.Image:
    """The first, middle and last frames side by side (a single frame: itself)."""
    if len(frames) == 1:
        return frames[0]
    chosen = [frames[0], frames[(len(frames) - 1) // 2], frames[-1]]
    width, height = chosen[0].size
    strip = Image.new("RGB", (3 * width, height))
    for position, frame in enumerate(chosen):
        strip.paste(frame.convert("RGB"), (position * width, 0))
    return strip


def latent_frame(frame: int, frames: int, latent_frames: int) -> int:
    """The latent frame a video frame decodes from, for a causal video VAE (Wan's): frame 0 alone, then
    (frames - 1) / (latent_frames - 1) frames per latent frame."""
    if frame == 0 or latent_frames == 1:
        return 0
    return 1 + (frame - 1) * (latent_frames - 1) // (frames - 1)


def frame_overlays(frames: list[Image.Image], assignment: np.ndarray, latent_frames: int) -> list[Image.Image]:
    """Each frame with its own latent frame's mask overlaid; ``assignment`` is the (F·h, w) item map of
    the video's token grid, its ``latent_frames`` frames stacked top to bottom."""
    per_frame = assignment.reshape(latent_frames, assignment.shape[0] // latent_frames, -1)
    return [mask_overlay(frame, per_frame[latent_frame(i, len(frames), latent_frames)]) for i, frame in enumerate(frames)]
