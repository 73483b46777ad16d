"""Allow ``python -m bulkd``."""

from bulkd.cli import main

raise SystemExit(main())
