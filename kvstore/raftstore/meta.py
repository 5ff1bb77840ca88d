"""Region metadata as stored in the ``raft`` column family.

Keys (all in ``CF_RAFT``): ``region/<id>/meta`` -> the Region (JSON: ids,
hex keys, epoch, peers), ``region/<id>/applied`` -> the last applied log
index. Both are written in the same batch as the data an entry changes, so a
restarted replica resumes exactly after the last entry it applied.
"""

from __future__ import annotations

import json
import struct

from kvstore.types import Peer, Region, RegionEpoch

_U64 = struct.Struct(">Q")
REGION_PREFIX = b"region/"
ID_ALLOC_KEY = b"store/id_alloc"


def meta_key(region_id: int) -> bytes:
    return REGION_PREFIX + _U64.pack(region_id) + b"/meta"


def applied_key(region_id: int) -> bytes:
    return REGION_PREFIX + _U64.pack(region_id) + b"/applied"


def encode_region(r: Region) -> bytes:
    return json.dumps(
        {
            "id": r.id,
            "start": r.start_key.hex(),
            "end": r.end_key.hex(),
            "conf_ver": r.epoch.conf_ver,
            "version": r.epoch.version,
            "peers": [[p.id, p.store_id, p.is_learner] for p in r.peers],
        }
    ).encode()


def decode_region(b: bytes) -> Region:
    d = json.loads(b)
    return Region(
        id=d["id"],
        start_key=bytes.fromhex(d["start"]),
        end_key=bytes.fromhex(d["end"]),
        epoch=RegionEpoch(d["conf_ver"], d["version"]),
        peers=tuple(Peer(p[0], p[1], p[2]) for p in d["peers"]),
    )


def encode_u64(v: int) -> bytes:
    return _U64.pack(v)


def decode_u64(b: bytes | None) -> int:
    return 0 if b is None else int(_U64.unpack(b)[0])
