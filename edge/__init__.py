"""edge-run: an offline on-device inference runtime (chat, LCM images, MobileSAM segmentation)."""

__version__ = "0.1.0"
