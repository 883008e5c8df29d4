"""Reading back what a tracker stored, with its own formats: a W&B offline run's ``.wandb``
file (its log format: 32 KiB blocks of records, each a 7-byte header of CRC, length and kind,
then a piece of a protobuf ``Record``; the SDK ships no reader for it)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK, HEADER = 32768, 7
FULL, LAST = 1, 4


def wandb_history(run: Path) -> list[dict]:
    """The history rows of an offline run folder, in order."""
    from wandb.proto import wandb_internal_pb2

    data = next(run.glob("*.wandb")).read_bytes()
    assert data[:4] == b":W&B", data[:7]
    rows, piece, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if left < HEADER or (length, kind) == (0, 0):  # the rest of the block is padding
            pos += left
            continue
        piece += data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(piece)
            piece = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows
