"""The wire format: protobuf messages and gRPC services of htapkv.

What it is: the Python modules generated from ``proto/htapkv/*.proto``
(``metapb``, ``errorpb``, ``kvrpcpb``, ``tikvpb``, ``pdpb``; modelled on TiKV's
kvproto) plus the one hand-written module that maps them to and from
:mod:`kvstore.types` and :mod:`kvstore.errors`: :mod:`kvstore.proto.convert`.
:mod:`kvstore.proto.rpc` lists the services' methods, derived from the
descriptors.

Where it sits: below both ends of an RPC. ``kvstore.server`` (servicers) and
``kvstore.client`` (stubs) import it; it imports only ``kvstore.types`` and
``kvstore.errors`` (and protobuf/grpc), never the store-side layers — the
client reaches the wire without dragging the store in.

Code generation (why at import time): the ``*_pb2.py``/``*_pb2.pyi``/
``*_pb2_grpc.py`` files are build products, never committed (gitignored) nor
edited. Importing this package runs :func:`kvstore.proto._codegen.ensure_generated`,
which compares a hash of the ``.proto`` sources (and the grpcio-tools
version) with a stamp and regenerates with ``grpc_tools.protoc`` only when they
differ, under an exclusive file lock so that parallel test processes never
race or see half-written files (outputs are renamed into place, the stamp
last). This was chosen over a setuptools build hook because it is right in
every way this repository is used: a clean clone (``make`` installs with
``pip install -e``, and an editable install never re-runs build steps), an
edited ``.proto`` (picked up by the next import, no reinstall), ``git
checkout`` (hash, not mtimes), and tools run straight from the tree. The
Makefile also runs it once after installing, so mypy and import-linter see
the generated modules. An installed copy without ``proto/`` uses the
modules it ships.

protoc writes ``from htapkv import kvrpcpb_pb2`` for package-path protos; the
generator rewrites that to ``kvstore.proto``. The descriptors keep their
package-path names (``htapkv/kvrpcpb.proto``, ``htapkv.kvrpcpb.GetRequest``),
which is what keeps them from colliding in protobuf's global descriptor pool
(DESIGN.md §4).

Invariants: region errors and per-key errors are response *fields*
(``region_error``, ``error``/``errors``), never gRPC status codes; a non-OK
status means the call itself failed and its outcome is unknown.
"""

from kvstore.proto._codegen import ensure_generated

ensure_generated()
