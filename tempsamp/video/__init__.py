"""Video frames for the model: 2-FPS sampling with PyAV under a Qwen-VL pixel budget, and an on-disk cache."""

from tempsamp.video.cache import sample_frames
from tempsamp.video.sampling import Video, VideoDecodeError, clip_frame_size, sample_times, smart_resize

__all__ = ["Video", "VideoDecodeError", "clip_frame_size", "sample_frames", "sample_times", "smart_resize"]
