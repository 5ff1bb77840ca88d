"""Process wiring: what turns the store-side layers into something that serves.

Where it sits: the top of ``kvstore``; it may import every layer below.

Now: :mod:`kvstore.server.embedded`, a whole single-node store inside the
caller's process (``kvstore.open(path)``). To come: the gRPC services of the
store, PD and columnar processes.
"""
