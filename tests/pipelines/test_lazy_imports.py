"""``kedro run`` starts without the deep-learning stack: building the pipelines (what Kedro does
at start-up for any pipeline), loading the plugin registries, Kedro's reading of the node
annotations and the project's hooks leave torch, Lightning and MONAI unimported; the code that
trains or predicts imports them when it runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from neurokedro.lazy import LazyImport

ROOT = Path(__file__).resolve().parents[2]
#: What a data-engineering run must not pay for: the deep-learning stack and the training code.
HEAVY = ("torch", "lightning", "pytorch_lightning", "monai", "deepbet", "ants", "neurokedro.training")

REPORT = """
import json, sys
heavy = {heavy!r}
print("\\nIMPORTED " + json.dumps(sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in heavy))))
"""


def _heavy_imported_by(code: str, cwd: Path = ROOT) -> list[str]:
    """The :data:`HEAVY` modules imported after running ``code`` in a fresh interpreter."""
    result = subprocess.run([sys.executable, "-c", code + REPORT.format(heavy=HEAVY)], cwd=cwd, capture_output=True,
                            text=True, timeout=300,
                            env={**__import__("os").environ, "KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout.rsplit("IMPORTED ", 1)[1])


def test_building_every_pipeline_imports_no_deep_learning_stack():
    code = "import neurokedro.pipeline_registry as p\nassert 'age_regression' in p.register_pipelines()\n"
    assert _heavy_imported_by(code) == []


def test_the_plugin_registries_load_without_it():
    """Every registered task, report item and cohort adapter loads without it; model factories
    are only listed (they are torch modules, imported when a model is built)."""
    code = (
        "from neurokedro import plugins, models, settings\n"
        "for kind in ('tasks', 'report_items', 'cohorts'):\n"
        "    for name in plugins.names(kind):\n"
        "        plugins.get(kind, name)\n"
        "assert 'sfcn' in plugins.names('models')\n"
        "from neurokedro.tasks.age_regression import regression_loss, loss_out_size\n"
        "assert loss_out_size({'name': 'kl_soft_bins'}) == 80\n"
    )
    assert _heavy_imported_by(code) == []


def _type_hints_code(pipelines: str) -> str:
    """Code that runs Kedro's extraction of parameter types over ``pipelines`` (an expression
    over the registered ``pipelines``) and fails on any warning it logs."""
    return (
        "import logging, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "failures = []\n"
        "class Failures(logging.Handler):\n"
        "    def emit(self, record):\n"
        "        failures.append(record.getMessage())\n"
        "logging.getLogger('kedro.validation').addHandler(Failures(level=logging.WARNING))\n"
        "from kedro.validation.type_extractor import TypeExtractor\n"
        "import neurokedro.pipeline_registry as p\n"
        "pipelines = p.register_pipelines()\n"
        f"TypeExtractor({pipelines}).extract_types_from_pipelines()\n"
        "assert not failures, failures\n"
    )


def test_kedro_reads_the_data_engineering_nodes_annotations_without_torch():
    """Kedro's parameter validation reads node annotations (``typing.get_type_hints``) of the
    pipelines a run names: for ``kedro run --pipeline data_engineering`` none needs torch."""
    assert _heavy_imported_by(_type_hints_code("{'data_engineering': pipelines['data_engineering']}")) == []


def test_kedro_resolves_every_nodes_annotations():
    """No node's annotations fail to resolve (Kedro would log a warning per node); ``nn.Module``
    is torch's own class, imported only as these are read (not Lightning nor MONAI)."""
    code = _type_hints_code("pipelines") + (
        "import typing, torch\n"
        "from neurokedro.pipelines.modelling.nodes import train_model\n"
        "assert typing.get_type_hints(train_model)['pretrained_model'] == typing.Optional[torch.nn.Module]\n"
    )
    imported = _heavy_imported_by(code)
    assert "torch" in imported and not {"lightning", "monai"} & set(imported)


def test_a_kedro_session_starts_and_validates_the_parameters_without_it(tmp_path):
    """The real start-up path: project bootstrap, session, context (the project's hooks, among
    them the parameter check, and kedro-mlflow's), the catalog, and the parameters as Kedro
    validates them for ``kedro run --pipeline data_engineering``."""
    for item in ("pyproject.toml",):
        shutil.copy(ROOT / item, tmp_path)
    shutil.copytree(ROOT / "conf", tmp_path / "conf", ignore=shutil.ignore_patterns("local"))
    (tmp_path / "conf" / "local").mkdir()
    (tmp_path / "src").mkdir()
    code = (
        "from pathlib import Path\n"
        "from kedro.framework.session import KedroSession\n"
        "from kedro.framework.startup import bootstrap_project\n"
        "bootstrap_project(Path.cwd())\n"
        "with KedroSession.create(project_path=Path.cwd()) as session:\n"
        "    context = session.load_context()\n"
        "    context._pipelines_to_validate = ['data_engineering']\n"
        "    assert 'preprocessing' in context.params\n"
        "    assert 'volume_store' in context.catalog\n"
        "    from kedro.framework.project import pipelines\n"
        "    assert 'data_engineering' in pipelines\n"
    )
    assert _heavy_imported_by(code, cwd=tmp_path) == []


@pytest.fixture
def lazy_module(tmp_path, monkeypatch):
    """A module ``lazy_probe`` on the path, not imported yet, defining a class and a function."""
    (tmp_path / "lazy_probe.py").write_text("class Thing:\n    pass\n\ndef make():\n    return Thing()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lazy_probe", raising=False)
    yield "lazy_probe"
    sys.modules.pop("lazy_probe", None)


def test_a_lazy_import_imports_on_first_use_and_acts_as_the_real_thing(lazy_module):
    module, thing, make = LazyImport(lazy_module), LazyImport(lazy_module, "Thing"), LazyImport(lazy_module, "make")
    assert lazy_module not in sys.modules and "lazy_probe" in repr(thing)
    made = make()  # called through
    assert lazy_module in sys.modules
    assert isinstance(made, thing) and not isinstance(1, thing) and issubclass(module.Thing, thing)
    assert module.Thing is thing.resolve() is sys.modules[lazy_module].Thing


def test_a_lazy_import_resolves_in_annotations_and_fails_only_when_used(lazy_module):
    namespace = {"probe": LazyImport(lazy_module), "typing": typing}
    exec("from __future__ import annotations\ndef f(x: probe.Thing | None) -> int:\n    return 1\n", namespace)
    assert lazy_module not in sys.modules
    assert typing.get_type_hints(namespace["f"])["x"] == typing.Optional[sys.modules[lazy_module].Thing]
    missing = LazyImport("neurokedro_no_such_module")  # creating it is fine
    with pytest.raises(ImportError):
        missing.anything
    assert not hasattr(LazyImport(lazy_module), "__wrapped__")  # protocol probes do not import


def test_each_pipeline_has_the_blocks_of_the_tasks_it_reads_checked():
    """The hooks check a task's parameter blocks (its model block imports the model plugins, so
    torch) before a pipeline that reads them runs: never for ``data_engineering``."""
    from neurokedro import plugins
    from neurokedro.hooks import tasks_read_by
    from neurokedro.pipeline_registry import register_pipelines

    pipelines, tasks = register_pipelines(), plugins.names("tasks")
    assert tasks_read_by(pipelines["data_engineering"], tasks) == []
    for task in tasks:
        assert tasks_read_by(pipelines[task], tasks) == [task]
        assert tasks_read_by(pipelines[f"{task}_search"], tasks) == [task]


def test_a_bad_task_parameter_stops_its_pipeline_before_the_first_node_not_data_engineering():
    from kedro.io import DataCatalog, MemoryDataset

    from neurokedro.hooks import NeuroKedroHooks
    from neurokedro.pipeline_registry import register_pipelines
    from neurokedro.schemas import ParameterError

    pipelines = register_pipelines()
    bad = {"age_regression": {"model": {"name": "sfcn", "sfcn": {"dropuot": 0.5}}}}
    catalog = DataCatalog(datasets={"parameters": MemoryDataset(bad)})
    hooks = NeuroKedroHooks()
    with pytest.raises(ParameterError, match="age_regression.model.sfcn"):
        hooks.before_pipeline_run({"pipeline_names": ["age_regression"]}, pipelines["age_regression"], catalog)
    hooks.before_pipeline_run({"pipeline_names": ["data_engineering"]}, pipelines["data_engineering"], catalog)
