"""The wire format: code generation and the Python <-> protobuf mapping.

* every conversion of :mod:`kvstore.proto.convert` round-trips (hypothesis),
  through serialized bytes, for records, region errors and key errors, and
  through the error fields of every Kv response;
* values that cannot be represented decode to InvalidArgumentError;
* the generated modules are importable as ``kvstore.proto.*``, their
  descriptors keep package-path names, and a foreign ``kvrpcpb.proto`` (e.g.
  TiKV's own kvproto) can share protobuf's global pool with them;
* concurrent generators do not race.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore import errors as err
from kvstore.proto import _codegen, errorpb_pb2, kvrpcpb_pb2, metapb_pb2, pdpb_pb2
from kvstore.proto import convert as cv
from kvstore.proto.rpc import BY_BATCH_FIELD, KV_METHODS
from kvstore.types import (
    LockInfo,
    LockType,
    Mutation,
    Op,
    Peer,
    Region,
    RegionEpoch,
    TxnAction,
    TxnStatus,
)

ROOT = Path(__file__).resolve().parent.parent

u64 = st.integers(0, 2**64 - 1)
small_bytes = st.binary(max_size=40)
text = st.text(max_size=40)

lock_infos = st.builds(
    LockInfo,
    key=small_bytes,
    primary=small_bytes,
    lock_ts=u64,
    ttl=u64,
    lock_type=st.sampled_from(LockType),
    min_commit_ts=u64,
    txn_size=u64,
)
mutations = st.builds(Mutation, op=st.sampled_from(Op), key=small_bytes, value=small_bytes)
txn_statuses = st.builds(
    TxnStatus,
    lock_ttl=u64,
    commit_ts=u64,
    action=st.sampled_from(TxnAction),
    lock=st.none() | lock_infos,
)
epochs = st.builds(RegionEpoch, conf_ver=u64, version=u64)
peers = st.builds(Peer, id=u64, store_id=u64, is_learner=st.booleans())
regions = st.builds(
    Region,
    id=u64,
    start_key=small_bytes,
    end_key=small_bytes,
    epoch=epochs,
    peers=st.lists(peers, max_size=4).map(tuple),
)
contexts = st.builds(
    cv.RequestContext, region_id=u64, region_epoch=st.none() | epochs, peer=st.none() | peers
)

region_errors = st.one_of(
    st.builds(err.NotLeaderError, region_id=u64, leader_store_id=u64, leader_peer_id=u64),
    st.builds(err.EpochNotMatchError, region_id=u64, current_regions=st.lists(regions, max_size=3)),
    st.builds(
        err.KeyNotInRegionError,
        key=small_bytes,
        region_id=u64,
        start_key=small_bytes,
        end_key=small_bytes,
    ),
    st.builds(err.RegionNotFoundError, region_id=u64),
    st.builds(err.ServerIsBusyError, reason=text, backoff_ms=u64),
    st.builds(err.ProposalDroppedError, region_id=u64, reason=text),
    st.builds(err.DataIsNotReadyError, region_id=u64, peer_id=u64, safe_ts=u64, reason=text),
    st.builds(err.RegionError, text),
)
MESSAGE_ERRORS = [
    err.InvalidArgumentError,
    err.GcTooEarlyError,
    err.ClosedError,
    err.StorageError,
    err.TsoError,
    err.TxnAbortedError,
    err.UndeterminedError,
    err.TxnError,
    err.KVError,
]
key_errors = st.one_of(
    st.builds(err.KeyIsLockedError, lock=lock_infos),
    st.builds(
        err.WriteConflictError,
        key=small_bytes,
        start_ts=u64,
        conflict_start_ts=u64,
        conflict_commit_ts=u64,
        reason=text,
    ),
    st.builds(err.AlreadyExistsError, key=small_bytes),
    st.builds(err.TxnLockNotFoundError, key=small_bytes, start_ts=u64),
    st.builds(err.TxnNotFoundError, key=small_bytes, start_ts=u64),
    st.builds(
        err.CommitTsExpiredError, key=small_bytes, start_ts=u64, commit_ts=u64, min_commit_ts=u64
    ),
    st.builds(err.CommittedError, key=small_bytes, start_ts=u64, commit_ts=u64),
    *(st.builds(cls, text) for cls in MESSAGE_ERRORS),
)


def wire(m: Any) -> Any:
    """Through bytes, as over the network."""
    return type(m).FromString(m.SerializeToString())


def same_error(a: BaseException, b: BaseException) -> bool:
    if type(a) is not type(b):
        return False
    if dataclasses.is_dataclass(a):
        return all(getattr(a, f.name) == getattr(b, f.name) for f in dataclasses.fields(a))
    return str(a) == str(b)


# ----------------------------------------------------------------- records
@given(lock_infos)
def test_lock_info_round_trips(info: LockInfo) -> None:
    assert cv.lock_info_from_pb(wire(cv.lock_info_to_pb(info))) == info


@given(mutations)
def test_mutation_round_trips(m: Mutation) -> None:
    assert cv.mutation_from_pb(wire(cv.mutation_to_pb(m))) == m


@given(txn_statuses)
def test_txn_status_round_trips(s: TxnStatus) -> None:
    assert cv.txn_status_from_pb(wire(cv.txn_status_to_pb(s))) == s


@given(regions)
def test_region_round_trips(r: Region) -> None:
    assert cv.region_from_pb(wire(cv.region_to_pb(r))) == r


@given(contexts)
def test_request_context_round_trips(c: cv.RequestContext) -> None:
    assert cv.context_from_pb(wire(cv.context_to_pb(c))) == c


def test_unknown_enum_values_are_invalid_arguments() -> None:
    # proto3 enums are open: a peer may send numbers we do not know.
    with pytest.raises(err.InvalidArgumentError):
        cv.mutation_from_pb(kvrpcpb_pb2.Mutation(op=3, key=b"k"))  # kvproto's Rollback
    with pytest.raises(err.InvalidArgumentError):
        cv.lock_info_from_pb(kvrpcpb_pb2.LockInfo(lock_type=kvrpcpb_pb2.Insert))
    with pytest.raises(err.InvalidArgumentError):
        cv.txn_status_from_pb(kvrpcpb_pb2.CheckTxnStatusResponse(action=99))
    with pytest.raises(err.InvalidArgumentError):
        cv.peer_from_pb(metapb_pb2.Peer(role=7))


def test_non_mutations_are_invalid_arguments() -> None:
    with pytest.raises(err.InvalidArgumentError):
        cv.mutation_to_pb(("put", b"k", b"v"))  # type: ignore[arg-type]


# ----------------------------------------------------------------- errors
@given(region_errors)
def test_region_errors_round_trip(e: err.RegionError) -> None:
    assert same_error(cv.region_error_from_pb(wire(cv.region_error_to_pb(e))), e)


@given(key_errors)
def test_key_errors_round_trip(e: err.KVError) -> None:
    assert same_error(cv.key_error_from_pb(wire(cv.key_error_to_pb(e))), e)


def test_unmapped_error_classes_travel_as_their_nearest_base() -> None:
    class Custom(err.TxnError):
        pass

    class Odd(err.KVError):
        pass

    assert same_error(cv.key_error_from_pb(cv.key_error_to_pb(Custom("c"))), err.TxnError("c"))
    assert same_error(cv.key_error_from_pb(cv.key_error_to_pb(Odd("o"))), err.KVError("o"))


def test_data_is_not_ready_decodes_typed() -> None:
    m = errorpb_pb2.Error(data_is_not_ready=errorpb_pb2.DataIsNotReady(region_id=3, safe_ts=9))
    e = cv.region_error_from_pb(m)
    assert isinstance(e, err.DataIsNotReadyError) and e.region_id == 3 and e.safe_ts == 9


def test_an_empty_key_error_is_a_kv_error() -> None:
    assert type(cv.key_error_from_pb(kvrpcpb_pb2.KeyError())) is err.KVError


def test_undecodable_text_is_sanitised() -> None:
    bad = err.InvalidArgumentError("bad \udcff byte")
    out = cv.key_error_from_pb(wire(cv.key_error_to_pb(bad)))
    assert type(out) is err.InvalidArgumentError and "bad" in str(out)


@given(st.sampled_from(sorted(KV_METHODS)), region_errors | key_errors)
def test_every_response_carries_every_error(name: str, e: err.KVError) -> None:
    method = KV_METHODS[name]
    resp = method.response()
    cv.set_error(resp, e)
    resp = wire(resp)
    if name == "KvPrewrite" and isinstance(e, err.KeyIsLockedError):
        assert cv.prewrite_outcome(resp) == [e.lock]  # blocked, not failed
        return
    if name == "KvPrewrite":
        with pytest.raises(err.KVError) as info:
            cv.prewrite_outcome(resp)
        assert same_error(info.value, e)
        return
    got = cv.response_error(resp)
    assert got is not None and same_error(got, e)


def test_a_successful_response_reports_no_error() -> None:
    for m in KV_METHODS.values():
        if m.name != "KvPrewrite":
            assert cv.response_error(m.response()) is None
    assert cv.prewrite_outcome(kvrpcpb_pb2.PrewriteResponse()) == []


@given(
    st.sampled_from([err.InvalidArgumentError, err.TsoError, err.ClosedError, err.KVError]), text
)
def test_pd_errors_round_trip(cls: type[err.KVError], msg: str) -> None:
    got = cv.pd_error_from_pb(wire(cv.pd_error_to_pb(cls(msg))))
    assert got is not None and same_error(got, cls(msg))
    assert cv.pd_error_from_pb(pdpb_pb2.Error()) is None


# ----------------------------------------------------------------- method table
def test_every_kv_rpc_has_a_batch_commands_field() -> None:
    assert len(KV_METHODS) == 21  # 11 transactional, 8 raw, ReadIndex, KvImport
    assert {m.batch_field for m in KV_METHODS.values()} == set(BY_BATCH_FIELD)
    assert KV_METHODS["KvGet"].batch_field == "Get"
    assert KV_METHODS["RawCompareAndSwap"].request is kvrpcpb_pb2.RawCASRequest


# ----------------------------------------------------------------- codegen
def test_generated_modules_keep_package_path_names() -> None:
    assert kvrpcpb_pb2.DESCRIPTOR.name == "htapkv/kvrpcpb.proto"
    assert kvrpcpb_pb2.DESCRIPTOR.package == "htapkv.kvrpcpb"
    assert kvrpcpb_pb2.GetRequest.__module__ == "kvstore.proto.kvrpcpb_pb2"
    for path in (ROOT / "kvstore" / "proto").glob("*_pb2*.py*"):
        assert "from htapkv import" not in path.read_text(), path


def test_rewrite_fixes_imports_and_module_names() -> None:
    src = (
        "from htapkv import errorpb_pb2 as htapkv_dot_errorpb__pb2\n"
        "_builder.BuildTopDescriptorsAndMessages(DESCRIPTOR, 'htapkv.kvrpcpb_pb2', _globals)\n"
        "AddSerializedFile(b'\\n\\x14htapkv/kvrpcpb.proto\\x12\\x0ehtapkv.kvrpcpb')\n"
    )
    out = _codegen.rewrite(src)
    assert "from kvstore.proto import errorpb_pb2 as htapkv_dot_errorpb__pb2" in out
    assert "'kvstore.proto.kvrpcpb_pb2'" in out
    assert "htapkv/kvrpcpb.proto\\x12\\x0ehtapkv.kvrpcpb'" in out  # descriptor untouched


def test_generated_files_are_ignored_by_git() -> None:
    names = [p.name for p in (ROOT / "kvstore" / "proto").glob("*_pb2*.py*")]
    assert names
    r = subprocess.run(
        ["git", "check-ignore", *(f"kvstore/proto/{n}" for n in names)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert sorted(r.stdout.split()) == sorted(f"kvstore/proto/{n}" for n in names)


FOREIGN_POOL_CHECK = """
from google.protobuf import descriptor_pb2, descriptor_pool
from kvstore.proto import errorpb_pb2, kvrpcpb_pb2, metapb_pb2, pdpb_pb2, tikvpb_pb2  # noqa
pool = descriptor_pool.Default()
for name in ("metapb", "errorpb", "kvrpcpb", "tikvpb", "pdpb"):
    assert pool.FindFileByName(f"htapkv/{name}.proto").package == f"htapkv.{name}"
# What TiKV's own kvproto (or any bare-named proto) registers: must not clash.
f = descriptor_pb2.FileDescriptorProto(name="kvrpcpb.proto", package="kvrpcpb")
f.message_type.add(name="GetRequest").field.add(
    name="key", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
)
pool.Add(f)
assert pool.FindMessageTypeByName("kvrpcpb.GetRequest").full_name == "kvrpcpb.GetRequest"
assert pool.FindMessageTypeByName("htapkv.kvrpcpb.GetRequest").fields_by_name["version"]
print("ok")
"""


def test_no_collision_in_the_global_descriptor_pool() -> None:
    r = subprocess.run(
        [sys.executable, "-c", FOREIGN_POOL_CHECK],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


RACE = """
import sys
from kvstore.proto import _codegen
_codegen.ensure_generated(force=True)
from kvstore.proto import kvrpcpb_pb2, tikvpb_pb2, tikvpb_pb2_grpc  # noqa
print("ok")
"""


def test_concurrent_generators_do_not_race() -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == b"ok", err.decode()
    assert not _codegen.ensure_generated()  # up to date afterwards
    assert not list((ROOT / "kvstore" / "proto").glob(".codegen-*"))  # scratch removed
