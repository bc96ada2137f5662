"""Reads the records of an offline W&B run file (`run-<id>.wandb`) without the W&B service: what the tests check a
run logged, and what `bench/learning_curves.py` plots.

The file is a LevelDB-style log: a 7-byte header (":W&B", magic 0xBEE1, version 0), then 32 KiB
blocks of records, each with a 7-byte header (CRC-32, length, type: 1 full, 2 first, 3 middle,
4 last) whose payloads join into serialised `wandb.proto.wandb_internal_pb2.Record` messages.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

FILE_HEADER = struct.Struct("<4sHB")
RECORD_HEADER = struct.Struct("<IHB")
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def payloads(path: Path) -> list[bytes]:
    data = Path(path).read_bytes()
    ident, magic, _version = FILE_HEADER.unpack_from(data)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path} is not a W&B run file")
    out, pending, pos = [], b"", FILE_HEADER.size
    while pos + RECORD_HEADER.size <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < RECORD_HEADER.size:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = RECORD_HEADER.unpack_from(data, pos)
        if kind == 0 and length == 0:
            break
        body = data[pos + RECORD_HEADER.size : pos + RECORD_HEADER.size + length]
        pos += RECORD_HEADER.size + length
        if kind == FULL:
            out.append(body)
        elif kind == FIRST:
            pending = body
        elif kind == MIDDLE:
            pending += body
        elif kind == LAST:
            out.append(pending + body)
    return out


def records(path: Path) -> list[wandb_internal_pb2.Record]:
    parsed = []
    for payload in payloads(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        parsed.append(record)
    return parsed


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def history(path: Path) -> list[dict]:
    """Every `run.log` row as a dict of decoded values."""
    rows = []
    for r in records(path):
        if r.WhichOneof("record_type") == "history":
            rows.append({_key(i): json.loads(i.value_json) for i in r.history.item})
    return rows


def config(path: Path) -> dict:
    """The run config: what `wandb.init` was given (the run record), then each update over the run (later updates
    win; Lightning's logger records its hyper-parameters as updates)."""
    merged: dict = {}
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind in ("run", "config"):
            for i in (r.run.config if kind == "run" else r.config).update:
                merged[_key(i)] = json.loads(i.value_json)
    return merged


def metric_definitions(path: Path) -> dict[str, object]:
    return {r.metric.name: r.metric for r in records(path) if r.WhichOneof("record_type") == "metric" and r.metric.name}


def run_identity(path: Path) -> dict[str, str]:
    """The run's id, group and display name, from its `run` record."""
    for r in records(path):
        if r.WhichOneof("record_type") == "run":
            return {"id": r.run.run_id, "group": r.run.run_group, "name": r.run.display_name}
    raise ValueError(f"{path} has no run record")


def offline_runs(folder: Path) -> list[Path]:
    """The `.wandb` files of the offline runs under `folder`, oldest first."""
    return sorted(folder.rglob("offline-run-*/run-*.wandb"))
