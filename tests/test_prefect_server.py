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
    """`prefect server start` on a free loopback port with PREFECT_HOME in tmp_path; yields (api_url, env).
    Its scheduler service looks for due schedules every 5 s (production: 60 s) so a test sees it create runs."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect_home"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_RUNNER_POLL_FREQUENCY": "2",
           "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
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
    assert "Can't evaluate bulk DML" not in log.read_text()  # the SQLAlchemy 2.1 scheduler failure
    with socket.socket() as s:  # the port is free again: nothing of the server survived
        assert s.connect_ex(("127.0.0.1", port)) != 0


def post(api: str, path: str, body: dict) -> list | dict:
    r = httpx.post(f"{api}{path}", json=body, timeout=30)
    r.raise_for_status()
    return r.json()


@pytest.fixture()
def project(tmp_path) -> Path:
    """A fresh clone (git + DVC) with a tiny data set: the scheduled runs do prepare + validate."""
    from edgeopt.params import render_params_file
    from tests.test_dvc_pipeline import fresh_clone

    root = fresh_clone(tmp_path / "clone")
    params = root / "params.yaml"
    params.write_text(render_params_file(params.read_text(), ["data.max_images_per_class=30",
                                                              "validate.min_images_per_class=5"]))
    return root


def scheduled_run_completed(api: str, deployment_id: str):
    """The first run the server's scheduler created for the deployment (auto_scheduled) once it has finished."""
    def check():
        runs = post(api, "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}})
        done = [r for r in runs if r["auto_scheduled"]
                and r["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")]
        return done[0] if done else None
    return check


@pytest.mark.slow
def test_a_served_schedule_creates_runs_that_complete(prefect_server, project, tmp_path):
    api, env = prefect_server
    serve_log = tmp_path / "serve.log"
    served = start([sys.executable, "-m", "flows.serve", "--root", str(project), "--interval", "15",
                    "--target", "validate"], env, serve_log)
    try:
        deployments = wait_until(
            lambda: post(api, "/deployments/filter", {"deployments": {"name": {"any_": ["nightly"]}}}),
            180, "the served deployment", [served], [serve_log])
        nightly = deployments[0]
        assert [s["schedule"]["interval"] for s in nightly["schedules"]] == [15.0]
        assert nightly["parameters"]["root"] == str(project)
        assert (nightly["global_concurrency_limit"] or {}).get("limit") == 1, nightly  # runs take turns
        run = wait_until(scheduled_run_completed(api, nightly["id"]), 480, "a scheduled run", [served],
                         [serve_log])
    finally:
        stop(served)
    assert served.returncode == 0, serve_log.read_text()[-3000:]
    served_out = serve_log.read_text()
    assert "never awaited" not in served_out and "stopped; the deployments' schedules are paused" in served_out

    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["name"].startswith("small_cnn on digits 16px, 20")
    tasks = {t["name"]: t for t in post(api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})}
    assert set(tasks) >= {"prepare", "validate"} and "train" not in tasks
    assert {tasks["prepare"]["state_type"], tasks["validate"]["state_type"]} == {"COMPLETED"}
    artifacts = {a["key"]: a for a in post(api, "/artifacts/filter",
                                           {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}})}
    assert "validate" in artifacts["edge-release-summary"]["data"]
    logs = post(api, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run["id"]]}}})
    assert "Running stage 'validate'" in "\n".join(entry["message"] for entry in logs)
    import yaml

    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]  # DVC recorded the scheduled run
    assert set(lock) == {"prepare", "validate"}
    screenshot_the_ui(api, run, nightly, artifacts["edge-release-summary"])


def screenshot_the_ui(api: str, run: dict, deployment: dict, summary: dict) -> None:
    """What a person sees in the Prefect UI of the scheduled run: the run page, its artifacts, the summary
    artifact (verdict first) and the deployment with its schedule. Kept as reports/prefect-*.png; skipped (the
    scheduler checks above stand) when Chromium is not installed."""
    from tests.browser import Browser, chromium

    if chromium() is None:
        print("Chromium not installed (.ci/install-browser): no Prefect UI screenshots")
        return
    ui = api.removesuffix("/api")
    run_page = f"{ui}/runs/flow-run/{run['id']}"
    # (file, page, tab to click or None, texts that must be shown)
    pages = [("prefect-run.png", run_page, None, [run["name"], "prepare", "validate"]),
             ("prefect-run-artifacts.png", run_page, "Artifacts", ["edge-release-summary", "edge-release-progress"]),
             ("prefect-summary-artifact.png", f"{ui}/artifacts/artifact/{summary['id']}", None,
              ["Edge release: digits-classifier", "validate"]),
             ("prefect-deployment.png", f"{ui}/deployments/deployment/{deployment['id']}", None, ["nightly"])]
    with Browser(width=1280, height=900, timeout=120) as b:
        for name, url, tab, texts in pages:
            b.open(url)
            if tab:  # the tab's label is a leaf element; its click bubbles to the tab
                label = (f"[...document.querySelectorAll('*')].find(e => e.children.length === 0 && "
                         f"e.textContent.trim() === {json.dumps(tab)})")
                b.wait_for(label, timeout=120)
                b.evaluate(f"{label}.click()")
            shown = " && ".join(f"document.body.innerText.includes({json.dumps(t)})" for t in texts)
            b.wait_for(f"document.body && {shown}", timeout=120)
            time.sleep(1.0)  # charts and lazy panels settle after the text appears
            shot = b.screenshot(REPO / "reports" / name, full_page=True)
            assert shot.stat().st_size > 10_000, name  # a rendered page, not a blank one
            print(f"screenshot: {shot}")


@pytest.mark.slow
def test_a_work_pool_worker_runs_the_scheduled_deployment_of_prefect_yaml(prefect_server, project, tmp_path):
    """The documented way: a process work pool, `prefect deploy` of prefect.yaml, `prefect worker start`."""
    api, env = prefect_server
    env = {**env, "EDGEOPT_ROOT": str(project)}
    cli = lambda *args: subprocess.run([PREFECT, "--no-prompt", *args], env=env, cwd=project,  # noqa: E731
                                       capture_output=True, text=True, timeout=300)
    assert cli("work-pool", "create", "edgeopt", "--type", "process").returncode == 0
    deploy = cli("deploy", "--all", "--prefect-file", str(project / "prefect.yaml"))
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    declared = {d["name"]: d for d in post(api, "/deployments/filter", {"work_pools": {"name": {"any_": ["edgeopt"]}}})}
    assert set(declared) == {"nightly", "on-demand"}
    assert [s["schedule"]["cron"] for s in declared["nightly"]["schedules"]] == ["0 2 * * *"]
    assert (declared["nightly"]["global_concurrency_limit"] or {}).get("limit") == 1
    assert declared["nightly"]["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(project)}}]
    # the same deployment with a 15 s schedule and only prepare + validate, so the test sees the scheduler fire
    short = cli("deploy", "--name", "nightly", "--prefect-file", str(project / "prefect.yaml"), "--interval", "15",
                "--param", 'targets=["validate"]')
    assert short.returncode == 0, short.stdout + short.stderr
    nightly = post(api, "/deployments/filter", {"deployments": {"name": {"any_": ["nightly"]}}})[0]
    assert 15.0 in [s["schedule"].get("interval") for s in nightly["schedules"]]  # added beside the cron
    log = tmp_path / "worker.log"
    worker = start([PREFECT, "worker", "start", "--pool", "edgeopt"], env, log)
    try:
        run = wait_until(scheduled_run_completed(api, nightly["id"]), 480, "a scheduled run", [worker], [log])
    finally:
        stop(worker)
    assert run["state_type"] == "COMPLETED", (run["state"], log.read_text()[-3000:])
    assert (project / "metrics" / "validate.json").exists()
