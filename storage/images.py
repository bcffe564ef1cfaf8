"""Image columns in the Hugging Face `Image` layout.

An image cell is a struct `{bytes: binary, path: string}` holding the encoded file
(PNG by default). With the `huggingface` schema metadata that `image_features` adds,
`datasets` decodes such columns to PIL images, both through `DatasetStore.to_hf_dataset`
and through `datasets.load_dataset("parquet", data_files=...)` on the raw files.
"""
from __future__ import annotations

import io
import json
from typing import Iterable

import numpy as np
import pyarrow as pa
from PIL import Image

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def encode_png(image: "Image.Image | np.ndarray", compress_level: int = 1) -> bytes:
    """PNG bytes of a PIL image or an HxW / HxWxC uint8 array. Level 1: fast, still lossless."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def image_cell(image: "Image.Image | np.ndarray | bytes", path: str | None = None) -> dict:
    """One cell of an image column; bytes are taken as an already-encoded image file."""
    data = image if isinstance(image, (bytes, bytearray)) else encode_png(image)
    return {"bytes": bytes(data), "path": path}


def image_array(images: Iterable["Image.Image | np.ndarray | bytes | None"]) -> pa.Array:
    """A pyarrow array of image cells (None stays null)."""
    return pa.array([None if item is None else image_cell(item) for item in images], type=IMAGE_TYPE)


def decode_image(cell: dict | None) -> Image.Image | None:
    """PIL image of one cell as read back from a table (`table.column(c)[i].as_py()`)."""
    if cell is None:
        return None
    return Image.open(io.BytesIO(cell["bytes"]))


def image_features(schema: pa.Schema, image_columns: Iterable[str]) -> pa.Schema:
    """`schema` with the `huggingface` metadata that marks `image_columns` as `datasets.Image`.

    Other columns get the features `datasets` would infer, so the whole schema round-trips.
    """
    from datasets import Features, Image as HFImage

    features = Features.from_arrow_schema(schema)
    for column in image_columns:
        if schema.field(column).type != IMAGE_TYPE:
            raise TypeError(f"column {column!r} is {schema.field(column).type}, not an image struct {IMAGE_TYPE}")
        features[column] = HFImage()
    metadata = dict(schema.metadata or {})
    metadata[b"huggingface"] = json.dumps({"info": {"features": features.to_dict()}}).encode("utf-8")
    return schema.with_metadata(metadata)


def image_columns(schema: pa.Schema) -> list[str]:
    """Names of the top-level columns holding image structs."""
    return [field.name for field in schema if field.type == IMAGE_TYPE]
