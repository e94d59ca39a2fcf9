"""Known third-party warnings and log lines are hidden, exactly: the same text from elsewhere still shows."""

from __future__ import annotations

import logging
import warnings

import pytest

from neurokedro.logs.third_party import KNOWN_RECORDS, KNOWN_WARNINGS, LIGHTNING_LOGGERS, quiet_third_party

MLFLOW_MESSAGE = ("\x1b[33mAdd type hints to the `predict` method to enable data validation and automatic "
                  "signature inference during model logging.\x1b[0m")

#: Each known warning as its library words it (mlflow 3.17, kedro 1.7, omegaconf 2.4, torch 2.13).
EXAMPLES = {
    "mlflow.pyfunc.utils.data_validation": MLFLOW_MESSAGE,
    "kedro.framework.cli.project": "Option '--pipeline' is deprecated and will be removed in a future release. "
                                   "Please use '--pipelines' instead.",
    "kedro.config.omegaconf_config": "register_new_resolver() is deprecated and will be removed in a future release.\n"
                                     "Use register_resolver() instead.",
    "kedro.pipeline.node": "One or more dataset names contain '.' characters, which is not recommended as the dot "
                           "notation is reserved for automatic namespacing in Kedro.",
    "lightning.pytorch.utilities._pytree": "`isinstance(treespec, LeafSpec)` is deprecated, use "
                                           "`isinstance(treespec, TreeSpec) and treespec.is_leaf()` instead.",
}


def _warn_from(module: str, message: str, category: type[Warning], filename: str = "x.py") -> list[str]:
    """The warnings shown when ``module`` warns ``message`` (as its own code would)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        quiet_third_party()
        warnings.warn_explicit(message, category, filename, 1, module=module)
    return [str(w.message) for w in caught]


@pytest.mark.parametrize("known", KNOWN_WARNINGS, ids=lambda k: k.module)
def test_each_known_warning_is_hidden_from_its_module_only(known):
    assert set(EXAMPLES) == {k.module for k in KNOWN_WARNINGS}
    message = EXAMPLES[known.module]
    assert known.reason
    assert _warn_from(known.module, message, known.category) == []
    assert _warn_from("neurokedro.somewhere", message, known.category) == [message]
    assert _warn_from(known.module + "_other", message, known.category) == [message]  # the module, exactly


def test_a_captured_warning_that_a_library_re_enables_is_dropped_from_the_log(caplog):
    """MLflow wraps its warning in catch_warnings + simplefilter("once"), which beats any ignore
    filter; Kedro's logging routes it to the py.warnings logger, where the known one is dropped."""
    quiet_third_party()
    logger = logging.getLogger("py.warnings")
    path = "/venv/lib/python3.11/site-packages/mlflow/pyfunc/utils/data_validation.py"
    with caplog.at_level(logging.WARNING, logger="py.warnings"):
        logger.warning("%s", warnings.formatwarning(MLFLOW_MESSAGE, UserWarning, path, 187))
        logger.warning("%s", warnings.formatwarning(MLFLOW_MESSAGE, UserWarning, "/src/neurokedro/models/x.py", 3))
        logger.warning("%s", warnings.formatwarning("Something new", UserWarning, path, 200))
    shown = [r.getMessage() for r in caplog.records]
    assert len(shown) == 2
    assert "neurokedro/models/x.py" in shown[0] and "Something new" in shown[1]


def test_lightning_tips_and_device_lines_are_debug_on_either_lightning_logger(caplog):
    quiet_third_party()
    assert KNOWN_RECORDS and all(r.reason for r in KNOWN_RECORDS)
    for name in ("lightning.pytorch.utilities.rank_zero", "pytorch_lightning.utilities.rank_zero"):
        assert name in LIGHTNING_LOGGERS
        logger = logging.getLogger(name)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger=name):
            logger.info("💡 Tip: For seamless cloud logging, try installing litlogger")
            logger.info("GPU available: False, used: False")
            logger.info("GPU available: True (cuda), used: True")
            logger.info("Using bfloat16 Automatic Mixed Precision (AMP)")
            logger.info("`Trainer.fit` stopped: `max_epochs=2` reached.")
            logger.warning("Something Lightning has not said before")
        assert [r.getMessage() for r in caplog.records] == [
            "GPU available: True (cuda), used: True", "Something Lightning has not said before"]
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger=name):  # asked for: shown, as DEBUG
            logger.info("GPU available: False, used: False")
        assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("DEBUG", "GPU available: False, used: False")]


def test_installing_twice_does_not_stack_filters():
    quiet_third_party()
    counts = {name: len(logging.getLogger(name).filters) for name in ("py.warnings", *LIGHTNING_LOGGERS, "mlflow.pytorch")}
    quiet_third_party()
    assert {name: len(logging.getLogger(name).filters) for name in counts} == counts
