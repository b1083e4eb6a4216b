"""The one message a scale-out worker sends its reducer (ZeroMQ multipart, no pickle).

Parts: ``[envelope, batch tree, accumulators tree, *batch buffers, *accumulator buffers]``.
The envelope is a JSON object (worker, scan, seq, state, counters ...); the batch is the
per-frame results since the previous message, ``[[frame_id, timestamp, {result: value}], ...]``;
the accumulators are the worker's cumulative accumulators (one per analysis, in the order of
``Analyses``), so the latest message wins and a lost or repeated one changes nothing.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .wire import Registry, WireError, decode, encode

VERSION = 1
MAX_ENVELOPE_BYTES = 64 * 1024
#: worker counters a message carries (the engine's Counters fields)
COUNTER_FIELDS = ("completed", "dropped", "bad", "duplicate", "out_of_order")


@dataclass
class WorkerMessage:
    worker: str
    scan: str
    seq: int
    state: str  # RUNNING, CLOSE or FAULT (the worker engine's state)
    counters: dict[str, int] = field(default_factory=dict)
    #: frames the stream announced (header nimages, a file's length), when known
    announced: int | None = None
    series_ended: bool = False
    live: bool = False
    analyses: list[str] = field(default_factory=list)
    status: str = ""
    #: (frame_id, timestamp, results) since the previous message, in the worker's order
    batch: list[tuple[int, float, dict[str, Any]]] = field(default_factory=list)
    #: the cumulative accumulators, or None when this message does not carry them
    accs: list[Any] | None = None
    #: the raw accumulator parts, decoded only when needed (latest wins: most are never decoded)
    raw_accs: tuple[Any, list[Any]] | None = None

    def accumulators(self, registry: Registry) -> list[Any] | None:
        if self.accs is None and self.raw_accs is not None:
            tree, buffers = self.raw_accs
            accs = decode(tree, buffers, registry)
            if not isinstance(accs, list):
                raise WireError("accumulators must be a list, one per analysis")
            self.accs = accs
        return self.accs


def pack(msg: WorkerMessage, registry: Registry) -> list[Any]:
    """The message as ZeroMQ parts."""
    batch_tree, batch_bufs = encode([[fid, ts, res] for fid, ts, res in msg.batch], registry)
    acc_bufs: list[memoryview] = []
    if msg.accs is None:
        acc_tree = b""
    else:
        acc_tree, acc_bufs = encode(list(msg.accs), registry)
    env = {"v": VERSION, "worker": msg.worker, "scan": msg.scan, "seq": msg.seq, "state": msg.state,
           "counters": {k: int(msg.counters.get(k, 0)) for k in COUNTER_FIELDS}, "announced": msg.announced,
           "series_ended": msg.series_ended, "live": msg.live, "analyses": list(msg.analyses),
           "status": msg.status[:2000], "nbatch": len(batch_bufs), "nacc": len(acc_bufs)}
    return [json.dumps(env).encode(), batch_tree, acc_tree, *batch_bufs, *acc_bufs]


def _int(env: dict, key: str) -> int:
    v = env.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**63:
        raise WireError(f"envelope field {key!r} must be an integer in 0..2**63-1")
    return v


def _optional_int(env: dict, key: str) -> int | None:
    return None if env.get(key) is None else _int(env, key)


def unpack(parts: list[Any], registry: Registry) -> WorkerMessage:
    """A received message; WireError naming what is wrong. Accumulators stay raw (see ``accumulators``)."""
    if len(parts) < 3:
        raise WireError(f"a worker message has at least 3 parts, got {len(parts)}")
    raw = bytes(parts[0])
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise WireError(f"envelope of {len(raw)} bytes is larger than {MAX_ENVELOPE_BYTES}")
    try:
        env = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise WireError(f"envelope is not JSON: {exc}") from None
    if not isinstance(env, dict) or env.get("v") != VERSION:
        raise WireError(f"envelope must be a JSON object of version {VERSION}")
    for key in ("worker", "scan", "state", "status"):
        if not isinstance(env.get(key), str):
            raise WireError(f"envelope field {key!r} must be a string")
    nbatch, nacc = _int(env, "nbatch"), _int(env, "nacc")
    if 3 + nbatch + nacc != len(parts):
        raise WireError(f"envelope announces {nbatch} + {nacc} buffers, the message has {len(parts) - 3}")
    counters = env.get("counters")
    if not isinstance(counters, dict) or set(counters) != set(COUNTER_FIELDS):
        raise WireError(f"envelope counters must be {list(COUNTER_FIELDS)}")
    for k in COUNTER_FIELDS:
        _int(counters, k)
    analyses = env.get("analyses")
    if not isinstance(analyses, list) or not all(isinstance(a, str) for a in analyses):
        raise WireError("envelope field 'analyses' must be a list of strings")
    batch = decode(parts[1], parts[3:3 + nbatch], registry)
    if not isinstance(batch, list):
        raise WireError("the batch must be a list")
    frames: list[tuple[int, float, dict[str, Any]]] = []
    for item in batch:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], int)
                and not isinstance(item[0], bool) and 0 <= item[0] < 2**63
                and isinstance(item[1], (int, float)) and isinstance(item[2], dict)
                and all(isinstance(k, str) for k in item[2])):
            raise WireError("a batch entry must be [frame_id, timestamp, {result: value}]")
        frames.append((item[0], float(item[1]), item[2]))
    acc_tree = bytes(parts[2])
    raw_accs = (acc_tree, list(parts[3 + nbatch:])) if acc_tree else None
    return WorkerMessage(env["worker"], env["scan"], _int(env, "seq"), env["state"],
                         {k: counters[k] for k in COUNTER_FIELDS}, _optional_int(env, "announced"),
                         bool(env.get("series_ended")), bool(env.get("live")), analyses, env["status"],
                         frames, None, raw_accs)


__all__ = ["COUNTER_FIELDS", "WorkerMessage", "pack", "unpack"]
