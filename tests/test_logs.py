"""The daemon's logging: one JSON object per line, and redaction that no caller can bypass
(messages, arguments, ``extra`` fields and exception texts all go through it). Also a positive
control for the token sweep the daemon tests run, so a sweep that finds nothing means something."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest
from daemon_helpers import TOKEN, secret_leaks

from bulkd.logs import RedactingFilter, setup_logging
from bulkd.secret import MASK, Secret

SIGNED_URL = (
    "http://127.0.0.1:8787/_store/1001-ds_customer_record_1_00001.ndjson.gz"
    "?X-Amz-Expires=900&X-Amz-Date=20240101T000000Z&X-Amz-Signature=9f8e7d6c5b4a39281706f5e4d3c2b1a0"
)
SIGNATURE = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, restored afterwards (setup_logging replaces its handlers)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    access_level = logging.getLogger("aiohttp.access").level
    yield root
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(access_level)


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]


def test_json_lines_carry_extra_fields_and_are_scrubbed(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("json", "info", secrets=(Secret(TOKEN),))
    log = logging.getLogger("bulkd.test")
    log.info(
        "PUT %s with token %s\nsecond line",
        SIGNED_URL,
        TOKEN,
        extra={"event": "chunk", "job_id": "j1", "chunk": 3, "url": SIGNED_URL, "note": f"t={TOKEN}"},
    )
    (doc,) = lines(capsys)
    assert doc["level"] == "info"
    assert doc["logger"] == "bulkd.test"
    assert (doc["event"], doc["job_id"], doc["chunk"]) == ("chunk", "j1", 3)
    message = str(doc["message"])
    assert "second line" in message
    assert message.startswith("PUT http://127.0.0.1:8787/_store/1001-ds_customer_record_1_00001.ndjson.gz?")
    assert MASK in message
    for text in (message, str(doc["url"]), str(doc["note"])):
        assert TOKEN not in text
        assert SIGNATURE not in text
    assert str(doc["time"]).endswith("Z")


def test_exception_texts_are_scrubbed(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("json", "info", secrets=(Secret(TOKEN),))
    try:
        raise ConnectionError(f"cannot PUT {SIGNED_URL} (Auth-Api-Token: {TOKEN})")
    except ConnectionError:
        logging.getLogger("bulkd.test").exception("upload failed")
    (doc,) = lines(capsys)
    exception = str(doc["exception"])
    assert "ConnectionError" in exception
    assert "Traceback" in exception
    assert TOKEN not in exception
    assert SIGNATURE not in exception


def test_text_format_and_levels(root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("text", "warning", secrets=(Secret(TOKEN),))
    log = logging.getLogger("bulkd.test")
    log.info("not shown")
    log.warning("token %s at %s", TOKEN, SIGNED_URL)
    err = capsys.readouterr().err
    assert "not shown" not in err
    assert "WARNING" in err
    assert "bulkd.test" in err
    assert TOKEN not in err
    assert SIGNATURE not in err
    assert logging.getLogger("aiohttp.access").level == logging.WARNING


def test_auto_format_is_json_when_stderr_is_not_a_terminal(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("auto", "info")
    logging.getLogger("bulkd.test").info("hello")
    assert lines(capsys)[0]["message"] == "hello"


def test_the_filter_renders_arguments_once(root_logger: logging.Logger) -> None:
    record = logging.makeLogRecord({"msg": "a %s b %d", "args": (SIGNED_URL, 7), "levelno": logging.INFO})
    assert RedactingFilter((Secret(TOKEN), None)).filter(record)
    assert record.args is None
    assert record.getMessage().endswith(" b 7")
    assert SIGNATURE not in record.getMessage()


def test_the_sweep_finds_planted_secrets_and_ignores_masked_ones() -> None:
    """Positive control: the sweep the daemon tests rely on does see a token and a signature."""
    planted = [
        ("log", f"sent {TOKEN}"),
        ("report", f'{{"url": "{SIGNED_URL}"}}'),
        ("rejects", "?signature=abcdef"),
    ]
    found = secret_leaks(planted, [TOKEN])
    assert {f.split(":", 1)[0] for f in found} == {"log", "report", "rejects"}
    assert "log: the token" in found
    assert any("X-Amz-Signature=9f8e" in f for f in found)
    masked = [("log", f"X-Amz-Signature={MASK} and {MASK}"), ("log2", "http://h/p?<redacted>")]
    assert secret_leaks(masked, [TOKEN]) == []
