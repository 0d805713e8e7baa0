"""comining: find the objects a COCO dataset forgot to label (co-mining, AAAI 2021)."""

__version__ = "0.1.0"
