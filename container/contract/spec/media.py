"""Image files by extension, and the content type a client sends each as to /invocations (host tools:
sm.py invoke, the local workflow's classify stage). The server accepts these and application/x-image."""

from __future__ import annotations

IMAGE_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".gif": "image/gif",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}
