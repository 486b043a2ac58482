"""A real `prefect server start` on loopback: serve the deployments, trigger a run, read it back over REST.

Everything (server, `python -m flows.serve`, the CLI) runs as subprocesses with their own PREFECT_HOME in a temp
dir and is shut down in all cases; only 127.0.0.1 is contacted.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A subprocess in its own process group (so its children can be stopped with it)."""
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def wait_until(check, timeout: float, what: str, procs: list[subprocess.Popen], logs: list[Path]):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            break
        time.sleep(1.0)
    tails = "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs if log.exists())
    pytest.fail(f"timed out waiting for {what}\n{tails}")


@pytest.fixture()
def prefect_server(tmp_path):
    """`prefect server start` on a free loopback port with PREFECT_HOME in tmp_path; yields (api_url, env)."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect_home"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_RUNNER_POLL_FREQUENCY": "2",
           "PREFECT_CLI_PROMPT": "false", "EDGEOPT_NO_PROGRESS": "1"}
    log = tmp_path / "server.log"
    server = start([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log)
    try:
        def healthy():
            try:
                return httpx.get(f"{api}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 240, "the Prefect server", [server], [log])
        yield api, env
    finally:
        stop(server)
    assert server.poll() is not None
    with socket.socket() as s:  # the port is free again: nothing of the server survived
        assert s.connect_ex(("127.0.0.1", port)) != 0


def post(api: str, path: str, body: dict) -> list | dict:
    r = httpx.post(f"{api}{path}", json=body, timeout=30)
    r.raise_for_status()
    return r.json()


@pytest.mark.slow
def test_served_deployment_runs_on_a_real_server(prefect_server, tiny_project, tmp_path):
    api, env = prefect_server
    serve_log = tmp_path / "serve.log"
    served = start([sys.executable, "-m", "flows.serve", "--root", str(tiny_project)], env, serve_log)
    try:
        deployments = wait_until(
            lambda: post(api, "/deployments/filter", {"deployments": {"name": {"any_": ["nightly"]}}}),
            180, "the served deployment", [served], [serve_log])
        nightly = deployments[0]
        assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
        assert nightly["parameters"]["root"] == str(tiny_project)

        trigger = subprocess.run(
            [PREFECT, "deployment", "run", "edge-release/nightly", "--params",
             json.dumps({"targets": ["validate"], "overrides": ["validate.min_images_per_class=5"]})],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
        assert trigger.returncode == 0, trigger.stdout + trigger.stderr

        def finished_run():
            runs = post(api, "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [nightly["id"]]}}})
            done = [r for r in runs if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")]
            return done[0] if done else None

        run = wait_until(finished_run, 420, "the flow run", [served], [serve_log])
    finally:
        stop(served)

    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["name"].startswith("small_cnn on digits 16px, 20")
    assert run["parameters"]["overrides"] == ["validate.min_images_per_class=5"]
    tasks = post(api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})
    by_name = {t["name"]: t for t in tasks}
    assert {"prepare", "validate"} <= set(by_name)
    assert by_name["prepare"]["state_type"] == by_name["validate"]["state_type"] == "COMPLETED"
    assert "train" not in by_name
    artifacts = post(api, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}})
    summary = {a["key"]: a for a in artifacts}["edge-release-summary"]
    assert summary["type"] == "markdown"
    assert "| validate | Completed |" in summary["data"]
    logs = post(api, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run["id"]]}}})
    messages = "\n".join(entry["message"] for entry in logs)
    assert "validate: running stages/validate.py" in messages and "prepare: done in" in messages
    # the stages wrote their DVC outputs into the project
    assert (tiny_project / "metrics" / "validate.json").exists()
    assert (tiny_project / "reports" / "validation.md").exists()

    # prefect.yaml declares the same deployments for a process work pool
    cli = lambda *args: subprocess.run([PREFECT, "--no-prompt", *args], env={**env, "EDGEOPT_ROOT": str(REPO)},  # noqa
                                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert cli("work-pool", "create", "edgeopt", "--type", "process").returncode == 0
    deploy = cli("deploy", "--all", "--prefect-file", str(REPO / "prefect.yaml"))
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    declared = {d["name"]: d for d in post(api, "/deployments/filter", {"work_pools": {"name": {"any_": ["edgeopt"]}}})}
    assert set(declared) == {"nightly", "on-demand"}
    assert [s["schedule"]["cron"] for s in declared["nightly"]["schedules"]] == ["0 2 * * *"]
    assert declared["nightly"]["entrypoint"] == "flows/edge_release.py:edge_release"
    assert declared["nightly"]["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    assert declared["on-demand"]["parameters"]["n_clusters"] == [16, 64]
