"""The SQL layer (not built yet).

Will hold: a stateless TiDB-style SQL front end in the client process —
sqlglot parsing (MySQL dialect), catalog in KV meta keys, row codec with column
IDs, a planner that routes point reads to the row store and scans/aggregates
to the columnar replica, a vectorised Arrow executor, and a DB-API 2.0
interface. It reaches data only through ``kvstore.client`` and the columnar
read API.
"""
