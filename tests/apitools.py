"""A real API server for tests: ``dagwright serve`` in its own process (uvicorn), on a free port,
with its own trace store and settings; killed or stopped like a deployed one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from conftest import REPO, TESTS, free_port


class Server:
    def __init__(self, folder: Path, *, db: str | None = None, executor: str = "local",
                 **env: str) -> None:  # fmt: skip
        self.folder = folder
        self.db = db or str(folder / "trace.db")
        self.executor = executor
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DAGWRIGHT_")}
        self.env.update({
            "DAGWRIGHT_DB": self.db,
            "DAGWRIGHT_WORKFLOWS": str(REPO / "workflows"),
            "DAGWRIGHT_HEARTBEAT": "0.5",
            "DAGWRIGHT_SWEEP_INTERVAL": "0.5",
            "DAGWRIGHT_REDISPATCH_AFTER": "5",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
        })  # fmt: skip
        self.env.update(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.folder / f"server-{self.port}-{self.starts}.log"

    def start(self, wait: float = 30.0) -> Server:
        self.starts += 1
        log = open(self.log, "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from dagwright.cli.main import main; main()",
             "serve", "--port", str(self.port),
             "--executor", self.executor, "--log-level", "warning"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not up after {wait}s: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """kill -9: the server's machine lost, nothing cleaned up."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()

    def client(self, token: str | None = None, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def wait_final(client: httpx.Client, run_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """Poll a run until it has a final status; its JSON."""
    deadline = time.monotonic() + timeout
    while True:
        run = client.get(f"/v1/runs/{run_id}").json()
        if run["status"] in ("succeeded", "failed", "cancelled", "abandoned"):
            return run  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} still {run['status']} after {timeout}s")
        time.sleep(0.1)
