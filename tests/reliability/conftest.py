"""Fixtures for the reliability suites (issue 6): tmpfs mounts, RSS measurement, slow-test gating.

The suites drive the real daemon through :mod:`bulkd.selftest`. Tests marked ``slow`` (the long
soak, the big-file runs) are skipped unless ``BULKD_SLOW=1`` is set or ``-m slow`` selects them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_support import Mount


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = os.environ.get("BULKD_SLOW") == "1" or "slow" in (config.option.markexpr or "")
    if wanted:
        return
    skip = pytest.mark.skip(reason="slow: set BULKD_SLOW=1 or select with -m slow")
    here = Path(__file__).parent
    for item in items:
        if "slow" in item.keywords and here in Path(str(item.fspath)).parents:
            item.add_marker(skip)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Mount]:
    """``mount(path, size="2m", readonly=False)``: a small tmpfs there, unmounted afterwards.

    Skips the test when mounting is not permitted (not root, or no CAP_SYS_ADMIN in a container).
    """
    mounted: list[Path] = []

    def mount(path: Path, size: str = "2m", *, readonly: bool = False) -> Path:
        if shutil.which("mount") is None or os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root and mount(8)")
        path.mkdir(parents=True, exist_ok=True)
        options = f"size={size}" + (",ro" if readonly else "")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"mount -t tmpfs is not permitted here: {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
