"""bulkd's benchmark harness: deterministic data, peer converters and one comparative table.

Run it with ``python -m benchmarks.run``; see ``benchmarks/README.md``.
"""
