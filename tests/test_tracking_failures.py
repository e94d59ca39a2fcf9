"""An unreachable MLflow tracking server: the run still finishes, saves locally and says so."""

from __future__ import annotations

import http.server
import json
import logging
import socket
import threading
from pathlib import Path

import pytest

from neurokedro.hooks import NeuroKedroHooks, _redact, probe_tracking_server

FAST_TRAINING = {"max_epochs": 2, "progress_bar": False, "batch_size": 4, "checkpoint_dir": None,
                 "ensemble_size": 1}


def _free_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def health_server():
    """A tiny HTTP server on 127.0.0.1 answering 200 on ``/health`` (404 elsewhere); yields its URI."""

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            ok = self.path.rstrip("/").endswith("/health")
            self.send_response(200 if ok else 404)
            self.end_headers()
            self.wfile.write(b"OK" if ok else b"")

        def log_message(self, *args):  # keep pytest's output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.mark.timeout(30)
def test_probe_finds_a_reachable_server(health_server):
    reachable, detail = probe_tracking_server(health_server, timeout=3)
    assert reachable, detail
    assert "200" in detail


@pytest.mark.timeout(30)
def test_probe_reports_a_server_that_is_down():
    reachable, detail = probe_tracking_server(f"http://127.0.0.1:{_free_port()}", timeout=3)
    assert not reachable and detail


@pytest.mark.timeout(30)
def test_local_stores_are_not_probed(tmp_path):
    for uri in (f"sqlite:///{tmp_path}/mlflow.db", f"file://{tmp_path}/mlruns", "mlruns", "databricks"):
        assert probe_tracking_server(uri, timeout=1) == (True, "not probed (not an http server)")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("up", [True, False])
def test_the_hook_switches_to_the_local_store_only_when_the_server_is_down(health_server, tmp_path, up):
    from types import SimpleNamespace

    uri = health_server if up else f"http://127.0.0.1:{_free_port()}"
    conf = {"server": {"mlflow_tracking_uri": uri, "mlflow_registry_uri": uri}, "tracking": {"run": {"nested": True}}}
    context = SimpleNamespace(project_path=tmp_path, config_loader={"mlflow": conf}, params={})
    NeuroKedroHooks().after_context_created(context)
    patched = context.config_loader["mlflow"]
    if up:
        assert patched is conf and conf["server"]["mlflow_tracking_uri"] == uri
    else:
        assert patched["server"] == {"mlflow_tracking_uri": f"sqlite:///{tmp_path.resolve().as_posix()}/mlflow.db",
                                     "mlflow_registry_uri": None}
        assert patched["tracking"] == conf["tracking"] and conf["server"]["mlflow_tracking_uri"] == uri


def test_the_warning_does_not_show_a_password():
    assert _redact("https://me:s3cret@mlflow.example.org/x") == "https://me:***@mlflow.example.org/x"
    assert _redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


@pytest.fixture
def local_tracking(tmp_path):
    """MLflow's fluent API on a throw-away sqlite store, restored afterwards."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path.as_posix()}/mlflow.db")
    # an experiment of this store: the one a Kedro session left active belongs to another store
    mlflow.set_experiment("tracking-failures")
    yield mlflow
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(previous)


@pytest.mark.timeout(60)
def test_tracking_errors_mid_run_are_warnings(local_tracking, monkeypatch, caplog, request):
    """The server failing while a fold trains: the child run is closed, the training goes on."""
    from neurokedro.training import tracking

    mlflow = local_tracking
    # A Kedro session earlier in the test process may have configured the project's loggers not
    # to propagate to the root logger (where caplog listens): listen on the module's logger itself.
    tracking_logger = logging.getLogger("neurokedro.training.tracking")
    tracking_logger.addHandler(caplog.handler)
    request.addfinalizer(lambda: tracking_logger.removeHandler(caplog.handler))
    caplog.set_level(logging.WARNING, logger="neurokedro.training.tracking")
    with mlflow.start_run() as parent:
        # opened, but its parameters cannot be logged: closed again, the block runs untracked
        monkeypatch.setattr(mlflow, "log_params", lambda *a, **k: (_ for _ in ()).throw(OSError("server gone")))
        with tracking.child_run("fold_0", {"lr": 1e-3}) as run_id:
            assert run_id is None
            assert mlflow.active_run().info.run_id == parent.info.run_id
        monkeypatch.undo()
        # ending the child run fails: a warning, and the parent is the active run again
        with tracking.child_run("fold_1", {"lr": 1e-3}) as run_id:
            assert run_id is not None
            for method in ("set_terminated", "log_metric"):
                monkeypatch.setattr(mlflow.MlflowClient, method,
                                    lambda *a, **k: (_ for _ in ()).throw(OSError("server gone")))
        assert mlflow.active_run().info.run_id == parent.info.run_id
        tracking.log_metrics(run_id, {"mae": 1.0})  # a warning too
        monkeypatch.undo()
    messages = [r.getMessage() for r in caplog.records]
    assert any("child run 'fold_0'" in m for m in messages)
    assert any("Could not end the MLflow run" in m for m in messages)
    assert any("Could not log metrics" in m for m in messages)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_run_with_an_unreachable_tracking_server_falls_back_to_the_local_store(kedro_project, caplog, monkeypatch, request):
    import mlflow

    uri = f"http://127.0.0.1:{_free_port()}"
    # safety nets: should the fallback not happen, MLflow fails fast instead of retrying for minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # MLflow sets it; restored at teardown
    root = Path.cwd()  # the fixture's throw-away project
    (root / "conf" / "local" / "mlflow.yml").write_text(f"server:\n  mlflow_tracking_uri: {uri}\n")
    # Kedro sets logging up (dictConfig) at the first bootstrap in a process, dropping the root's
    # handlers (caplog's) and those of the project's loggers: bootstrap first, then listen on the
    # hook's own logger (later bootstraps leave logging alone)
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(root)
    hook_logger = logging.getLogger("neurokedro.hooks")
    hook_logger.addHandler(caplog.handler)
    request.addfinalizer(lambda: hook_logger.removeHandler(caplog.handler))

    kedro_project(
        "age_regression",
        params={"cohort": {"demo": {"n_subjects": 14}}, "split": {"n_folds": 2},
                "age_regression": {"training": {**FAST_TRAINING, "test_time_flip": False}},
                # what does not matter here is kept short: the test has 90 s on 2 busy cores
                "reporting": {"bootstrap": {"n_resamples": 50}, "saliency": {"n_subjects": 1}}},
    )

    # the model and the metrics are saved locally
    assert (root / "data/06_models/age_regression/model/MLmodel").is_file()
    metrics = json.loads((root / "data/08_reporting/age_regression/test_metrics.json").read_text())
    # a warning names the server it could not reach, and where the run went instead
    local_uri = f"sqlite:///{root.as_posix()}/mlflow.db"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(uri in message and local_uri in message for message in warnings), warnings
    # the local MLflow store holds the run with its metrics
    client = mlflow.MlflowClient(tracking_uri=local_uri)
    experiment = client.get_experiment_by_name("age_regression")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["test_mae"] == pytest.approx(metrics["mae"])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
