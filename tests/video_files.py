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
