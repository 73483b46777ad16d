"""Reliability self-test: prove bulkd's promises by breaking things on purpose.

``run_selftest`` (``bulkd selftest``) runs the real daemon as a subprocess against an in-process
Lexer simulator, injects faults (crash points, SIGKILLs at random times, HTTP errors, resets,
expiring URLs), restarts it until the inbox is drained, checks the oracle and prints the fault
matrix. The pieces are reusable by tests:

* :mod:`~bulkd.selftest.inputs`: seeded input files with a known outcome;
* :mod:`~bulkd.selftest.daemon`: a workspace (directories + config) and one daemon run;
* :mod:`~bulkd.selftest.oracle`: the invariants;
* :mod:`~bulkd.selftest.scenario`: one scenario from inputs to verdict;
* :mod:`~bulkd.selftest.matrix`: the fault matrix and its table.
"""

from __future__ import annotations

from bulkd.selftest.daemon import LiveDaemon, RunRecord, Tuning, Workspace, run_daemon, wait_until
from bulkd.selftest.inputs import InputFile, InputSet, drop_into_inbox, generate_inputs
from bulkd.selftest.matrix import all_crashpoints, fault_matrix, format_matrix, run_matrix, run_selftest
from bulkd.selftest.oracle import (
    LedgerView,
    Tally,
    check_final,
    check_progress,
    find_leaks,
    read_store,
    tally,
)
from bulkd.selftest.scenario import Outcome, Rig, Scenario, random_scenario, run_scenario

__all__ = [
    "InputFile",
    "InputSet",
    "LedgerView",
    "LiveDaemon",
    "Outcome",
    "Rig",
    "RunRecord",
    "Scenario",
    "Tally",
    "Tuning",
    "Workspace",
    "all_crashpoints",
    "check_final",
    "check_progress",
    "drop_into_inbox",
    "fault_matrix",
    "find_leaks",
    "format_matrix",
    "generate_inputs",
    "random_scenario",
    "read_store",
    "run_daemon",
    "run_matrix",
    "run_scenario",
    "run_selftest",
    "tally",
    "wait_until",
]
