"""Small mp4 files for tests: a coloured square on screen during one span (PyAV + libx264)."""

from pathlib import Path

import numpy as np

RED, BLUE = (220, 30, 30), (30, 30, 220)


def write_video(path: Path, seconds: float, colour_span: tuple[float, float], fps: int = 4, size: int = 56,
                colour: tuple[int, int, int] = RED) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(int(seconds * fps)):
            frame = np.zeros((size, size, 3), np.uint8)
            if colour_span[0] <= i / fps < colour_span[1]:
                frame[8:40, 8:40] = colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_motion_video(path: Path, seconds: float, fps: int = 10, width: int = 320, height: int = 240) -> None:
    """A clip with motion and texture: a square crossing a gradient whose colours drift over time.

    Real-looking enough that resampling filters differ (flat frames would hide any difference)."""
    import av

    ys, xs = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(int(seconds * fps)):
            t = i / fps
            frame = np.empty((height, width, 3), np.uint8)
            frame[..., 0] = (xs * 255 // width + 7 * i) % 256
            frame[..., 1] = (ys * 255 // height + 3 * i) % 256
            frame[..., 2] = ((xs + ys) // 4 + int(20 * t)) % 256
            x = int((width - 48) * (0.5 + 0.5 * np.sin(t / 3)))
            y = int((height - 48) * (0.5 + 0.5 * np.cos(t / 5)))
            frame[y:y + 48, x:x + 48] = (240, 240, 240)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
