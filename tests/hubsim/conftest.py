"""Fixtures for the simulator tests: a real server on loopback and a real aiohttp client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from simclient import TOKEN, Client

from bulkd.hubsim import RunningSimulator, SimulatorConfig, start_simulator
from bulkd.secret import Secret


@pytest.fixture
def sim_config(tmp_path: Path) -> SimulatorConfig:
    return SimulatorConfig(token=Secret(TOKEN), store_dir=tmp_path / "store")


@pytest.fixture
async def sim(sim_config: SimulatorConfig) -> AsyncIterator[RunningSimulator]:
    running = await start_simulator(sim_config)
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
async def client(sim: RunningSimulator) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession() as http:
        yield Client(http, sim)
