"""The two web UIs as a person uses them: a real (headless) Chromium opens kedro-viz and the MLflow UI.

Both servers run as subprocesses bound to 127.0.0.1 on a free port and are stopped, with their whole
process group, when the test ends. Chromium is told to resolve no host name (kedro-viz's page asks
Google for a web font), so nothing but localhost is contacted. The screenshots land in the
throw-away project copy under ``data/08_reporting/screenshots/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (no `chromium` or `chromium-browser` "
                                                "on PATH; Debian: apt-get install chromium)"),
]

TASKS = ("age_regression", "sex_classification", "tissue_segmentation", "autoencoder")
FAST_TRAINING = {"max_epochs": 2, "progress_bar": False, "batch_size": 4, "checkpoint_dir": None,
                 "ensemble_size": 1}  # as in tests/pipelines/test_end_to_end.py
QUIET = {"KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "MPLBACKEND": "Agg"}
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-dev-shm-usage",  # Debian's launcher means to add it when /dev/shm is small, but its check can fail
    "--no-proxy-server", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # localhost only
]
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an http_proxy


# ---------------------------------------------------------------- processes

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the process group ``proc`` leads (it was started with ``start_new_session``), wait a
    bounded time, then SIGKILL whatever of that group is left."""
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    while time.monotonic() < deadline:  # the leader's children (uvicorn workers) may outlive it briefly
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


@contextlib.contextmanager
def _server(cmd: list[str], ready_url: str, log: Path, cwd: Path, env: dict | None = None, timeout: float = 120):
    """Run ``cmd`` in its own process group until the block ends; wait (bounded) until ``ready_url``
    answers 200 first. Fails with the server's log when it exits or never answers."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{' '.join(cmd[:4])} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                with LOCAL.open(ready_url, timeout=5) as response:
                    if response.status == 200:
                        break
            if time.monotonic() > deadline:
                pytest.fail(f"{ready_url} did not answer within {timeout} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield proc
    finally:
        _stop_group(proc)


def _chromium(url: str, *extra: str, budget_ms: int = 15000, timeout: float = 120) -> str:
    """Load ``url`` in headless Chromium (a fresh profile each time, so no state from an earlier
    visit) for ``budget_ms`` of virtual time, during which the page's scripts and fetches run to
    completion; return stdout (the DOM with ``--dump-dom``)."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
               *extra, url]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop_group(proc, grace=5)
            pytest.fail(f"Chromium did not finish {url} within {timeout} s")
        finally:
            _stop_group(proc, grace=5)
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    return out.decode()


def _dom(url: str) -> str:
    dom = _chromium(url, "--dump-dom")
    assert "<html" in dom, dom[:500]
    return dom


def _screenshot(url: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    _chromium(url, f"--screenshot={path}", "--window-size=1600,1000", "--hide-scrollbars")
    _assert_real_picture(path)
    return path


def _assert_real_picture(path: Path) -> None:
    """A 1600x1000 PNG with content: a blank or one-line error page is >99 % one colour and has a
    few hundred colours at most; a rendered flowchart or table has thousands."""
    from PIL import Image

    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    assert path.stat().st_size > 20_000, path.stat().st_size
    with Image.open(path) as image:
        assert image.size == (1600, 1000)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(colours) > 500, len(colours)
    assert max(colours)[0] < 0.9 * 1600 * 1000  # no single colour fills the page


# ---------------------------------------------------------------- page parsing

class _Page(HTMLParser):
    """What a person sees in a dumped DOM: text, links, kedro-viz's flowchart nodes and pipeline menu."""

    def __init__(self, dom: str):
        super().__init__()
        self.text: list[str] = []
        self.links: dict[str, str] = {}  # href -> link text
        self.nodes: set[tuple[str, str]] = set()  # kedro-viz flowchart: (type, full name)
        self.menu: list[str] = []  # kedro-viz pipeline selector: its options
        self.selected: str | None = None  # and the one its button shows
        self._href: str | None = None
        self._divs = 0  # <div> nesting depth (never a void element, so start/end tags pair up)
        self._selector_depth: int | None = None  # depth of the pipeline selector's <div> while inside it
        self._in_button = False
        self._skip = 0
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "a":
            self._href = attrs.get("href")
        elif tag == "g" and attrs.get("data-node-type"):
            self.nodes.add((attrs["data-node-type"], attrs.get("data-node-fullname")))
        elif tag == "button" and self._selector_depth is not None:
            self._in_button = True
        elif tag == "div":
            self._divs += 1
            if attrs.get("data-test") == "kedro-pipeline-selector":
                self._selector_depth = self._divs
            elif self._selector_depth is not None and "menu-option__content" in (attrs.get("class") or "").split():
                self.menu.append(attrs.get("title"))

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1
        elif tag == "a":
            self._href = None
        elif tag == "button":
            self._in_button = False
        elif tag == "div":
            if self._selector_depth == self._divs:
                self._selector_depth = None
            self._divs -= 1

    def handle_data(self, data):
        data = data.strip()
        if not data or self._skip:
            return
        self.text.append(data)
        if self._href is not None:
            self.links[self._href] = self.links.get(self._href, "") + data
        if self._in_button and self.selected is None:
            self.selected = data

    def names(self, kind: str) -> set[str]:
        return {name for node_type, name in self.nodes if node_type == kind}


# ---------------------------------------------------------------- kedro-viz

def test_kedro_viz_renders_every_task_pipeline_in_a_browser(kedro_project, tmp_path):
    """``kedro viz build`` of a project copy, served over HTTP and opened in headless Chromium.

    Asserts: the default page's pipeline menu offers data_engineering and the four task pipelines,
    shows ``__default__`` with the shared data-engineering nodes and the ``age_regression``
    namespace as one collapsed box; ``?pid=<task>&expandAllPipelines=true`` (kedro-viz's URL
    parameters) selects each task pipeline and draws exactly the task nodes and datasets that the
    build's ``api/pipelines/<task>`` lists, among them train_model, predict_scans and
    ``<task>.model``, and no other task's outputs; the sex_classification flowchart has its ROC and
    confusion-matrix plot nodes. A screenshot of that flowchart is saved as
    ``data/08_reporting/screenshots/kedro_viz.png`` and must be a non-blank 1600x1000 PNG.
    """
    root = Path.cwd()  # the kedro_project fixture made a copy of the project the working directory
    result = subprocess.run([sys.executable, "-m", "kedro", "viz", "build"], cwd=root, capture_output=True,
                            text=True, timeout=600, env={**os.environ, **QUIET})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    site = root / "build"
    main = json.loads((site / "api/main").read_text())
    assert {"data_engineering", *TASKS} <= {p["id"] for p in main["pipelines"]}

    port = _free_port()
    base = f"http://127.0.0.1:{port}/"
    with _server([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)], base,
                 tmp_path / "http.log", cwd=site, env={**os.environ, **QUIET}, timeout=30):
        page = _Page(_dom(base))
        assert page.selected == "__default__"
        assert {"data_engineering", *TASKS, "__default__"} <= set(page.menu)
        assert {"build_cohort_table", "preprocess_scans", "split_by_subject"} <= page.names("task")
        assert page.names("modularPipeline") == {"age_regression"}  # the namespace, collapsed
        assert "train_model" not in page.names("task")

        for task in TASKS:
            page = _Page(_dom(f"{base}?pid={task}&expandAllPipelines=true"))
            assert page.selected == task
            api = json.loads((site / "api/pipelines" / task).read_text())
            expected = {(n["type"], n["name"]) for n in api["nodes"] if n["type"] in ("task", "data")}
            assert page.nodes == expected, (task, page.nodes ^ expected)
            assert {"train_model", "predict_scans", "evaluate_model", "preprocess_scans"} <= page.names("task")
            datasets = page.names("data")
            assert f"{task}.model" in datasets and f"{task}.predictions" in datasets
            others = {other for other in TASKS if other != task}
            # other tasks' models only where they are used: encoder transfer, and stacking brain age
            # with the segmentation model's tissue volumes
            shared = {"autoencoder.model"} | ({"tissue_segmentation.model"} if task == "age_regression" else set())
            assert not {d for d in datasets if d.split(".")[0] in others} - shared, datasets
            if task == "sex_classification":
                assert {"plot_roc_curve", "plot_confusion_matrix"} <= page.names("task")
            if task == "age_regression":
                assert "plot_predicted_vs_true" in page.names("task")

        shot = _screenshot(f"{base}?pid=sex_classification&expandAllPipelines=true",
                           root / "data/08_reporting/screenshots/kedro_viz.png")
    print(f"kedro-viz screenshot: {shot}")


# ---------------------------------------------------------------- MLflow UI

def test_mlflow_ui_lists_the_cross_validation_runs(kedro_project, tmp_path):
    """A quick age_regression run (14 demo subjects, 3 folds, 2 epochs), then ``mlflow server`` on
    the copy's ``mlflow.db`` and ``mlruns/``, opened through its REST API and in headless Chromium.

    Asserts: the REST API has an ``age_regression`` experiment holding one FINISHED parent run
    named ``age_regression`` with test_mae (equal to the reported test_metrics.json mae) and the
    cv_* aggregates, and three FINISHED child runs fold_0..fold_2 pointing at it, each with test_mae
    and a val_loss curve; the experiment page (``#/experiments/<id>/runs``, sorted by run name so
    the children are not folded under the parent) links every one of those four runs by name to
    its own run id; the parent's run page shows test_mae with the API's value and the three child
    runs. A screenshot of the runs table is saved as
    ``data/08_reporting/screenshots/mlflow_ui.png`` and must be a non-blank 1600x1000 PNG.
    """
    root = kedro_project("age_regression", params={
        "cohort": {"demo": {"n_subjects": 14}}, "split": {"n_folds": 3},
        "age_regression": {"training": FAST_TRAINING}})
    reported_mae = json.loads((root / "data/08_reporting/age_regression/test_metrics.json").read_text())["mae"]

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, **QUIET, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner processes
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--default-artifact-root", str(root / "mlruns")]
    with _server(cmd, f"{base}/health", tmp_path / "mlflow.log", cwd=root, env=env, timeout=120):

        def api(endpoint: str, body: dict) -> dict:
            request = urllib.request.Request(f"{base}/api/2.0/mlflow/{endpoint}", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"}, method="POST")
            with LOCAL.open(request, timeout=30) as response:
                return json.load(response)

        (experiment,) = api("experiments/search", {"max_results": 10, "filter": "name = 'age_regression'"})[
            "experiments"]
        runs = api("runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100})["runs"]
        tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs}
        metrics = {r["info"]["run_id"]: {m["key"]: m["value"] for m in r["data"].get("metrics", [])} for r in runs}
        (parent,) = [r["info"] for r in runs if "mlflow.parentRunId" not in tags[r["info"]["run_id"]]]
        children = [r["info"] for r in runs if r["info"]["run_id"] != parent["run_id"]]
        assert parent["run_name"] == "age_regression" and parent["status"] == "FINISHED"
        assert metrics[parent["run_id"]]["test_mae"] == pytest.approx(reported_mae)
        assert {"cv_mae_mean", "cv_mae_sd", "cv_test_mae_mean"} <= set(metrics[parent["run_id"]])
        assert sorted(c["run_name"] for c in children) == ["fold_0", "fold_1", "fold_2"]
        for child in children:
            assert child["status"] == "FINISHED" and tags[child["run_id"]]["mlflow.parentRunId"] == parent["run_id"]
            assert {"test_mae", "validation_mae", "val_loss"} <= set(metrics[child["run_id"]])
        names = {r["info"]["run_id"]: r["info"]["run_name"] for r in runs}

        # the runs table, as a person opens it; sorting by name lists the child runs as rows
        experiment_page = (f"{base}/#/experiments/{experiment['experiment_id']}/runs?"
                           + urllib.parse.urlencode({"orderByKey": "tags.`mlflow.runName`", "orderByAsc": "true"}))
        page = _Page(_dom(experiment_page))
        run_prefix = f"#/experiments/{experiment['experiment_id']}/runs/"
        listed = {href.removeprefix(run_prefix): text for href, text in page.links.items()
                  if href.startswith(run_prefix) and "/" not in href.removeprefix(run_prefix)}
        assert listed == names

        page = _Page(_dom(f"{base}/#/experiments/{experiment['experiment_id']}/runs/{parent['run_id']}"))
        shown = page.text[page.text.index("test_mae") + 1]
        assert float(shown) == pytest.approx(metrics[parent["run_id"]]["test_mae"])
        child_links = {href.removeprefix(run_prefix): text for href, text in page.links.items()
                       if href.startswith(run_prefix) and "/" not in href.removeprefix(run_prefix)}
        assert child_links == {c["run_id"]: c["run_name"] for c in children}  # "Child runs: fold_2, fold_1, fold_0"

        shot = _screenshot(experiment_page, root / "data/08_reporting/screenshots/mlflow_ui.png")
    print(f"MLflow UI screenshot: {shot}")
