"""The status server (HTTP API, Prometheus metrics, live dashboard) and ``bulkd status``.

``bulkd run`` starts :class:`StatusServer` beside the daemon (an addon, see
:mod:`bulkd.service`) when ``status.enabled``; it binds ``status.host:status.port``
(127.0.0.1:8780 by default) and is read-only. Modules: :mod:`~bulkd.status.app` (routes and
the token check), :mod:`~bulkd.status.views` (the JSON documents), :mod:`~bulkd.status.metrics`,
:mod:`~bulkd.status.throughput` (the dashboard's chart), :mod:`~bulkd.status.client` (the CLI)
and ``static/`` (the dashboard: plain HTML, CSS and JavaScript, no build step).
"""

from __future__ import annotations

from bulkd.status.server import StatusServer, status_addon

__all__ = ["StatusServer", "status_addon"]
