"""Safetensors files whose bytes depend only on their contents.

``safetensors.torch.save`` writes the metadata in hash-map order, which changes from one
process to the next, so the same tensors and metadata give different files. Here the header is
written again with the metadata sorted by key: the same seed gives the same file, byte for byte.
The format (8-byte little-endian header length, JSON header, data at offsets relative to the
header's end, the header padded with spaces to 8 bytes) is the safetensors specification's.
"""

from __future__ import annotations

import json
import struct

import torch
from safetensors.torch import save

_LENGTH = struct.Struct("<Q")
_ALIGNMENT = 8


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The safetensors file of ``tensors`` (contiguous, CPU, no two sharing storage) and
    ``metadata`` (strings), with the metadata in sorted key order."""
    data = save(tensors, metadata)
    (length,) = _LENGTH.unpack_from(data)
    header = json.loads(data[_LENGTH.size:_LENGTH.size + length])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % _ALIGNMENT)
    return _LENGTH.pack(len(text)) + text + data[_LENGTH.size + length:]
