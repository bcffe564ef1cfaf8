"""Pipeline stages: read input datasets, call dspo_core, publish the output dataset.

Every stage is a plain function (`pipeline.stages.STAGES[name].run`) usable without Prefect.
"""
import os

__version__ = "0.1.0"

# Stages convolve images of ever-changing shapes (random resizes, instance crops), and oneDNN
# caches a compiled primitive per shape, 1024 by default: a stage's memory grew with the number
# of images (degrade: +84 MB from 64 to 256 images) until that cap. 64 keeps it flat, at the
# same speed (degrade of 128 images: 13.4 s either way), as new shapes miss the cache anyway.
# Read by oneDNN at its first use.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
