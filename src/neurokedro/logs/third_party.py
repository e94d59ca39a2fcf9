"""Known third-party warnings and log lines that tell a NeuroKedro user nothing, hidden at their source.

Every entry names the exact message, the module (warnings) or logger (log records) it comes from,
and why hiding it is safe. Nothing else is touched: a new warning, or the same message from another
module, still shows. :func:`quiet_third_party` installs them; ``settings.py`` calls it when Kedro
loads the project, before plugins and pipelines are imported.

Warnings are ignored with :func:`warnings.filterwarnings`, and also dropped from the ``py.warnings``
logger that Kedro's logging routes captured warnings through, because some libraries re-enable
warnings inside their own ``catch_warnings`` (MLflow's ``filter_user_warnings_once`` does, around
the very warning listed first here). Log records are demoted to DEBUG: shown only when their
logger is set to DEBUG (``logging.getLogger("lightning.pytorch").setLevel("DEBUG")``, or in
``conf/logging.yml``).
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass

from kedro import KedroDeprecationWarning


@dataclass(frozen=True)
class KnownWarning:
    """A warning hidden by :func:`quiet_third_party`.

    Attributes:
        category: its class (subclasses are not matched by the ``py.warnings`` filter).
        module: the module the warning is attributed to (where ``warnings`` reports its line).
        message: regular expression matched at the start of the message, case-insensitively
            (as :func:`warnings.filterwarnings` matches).
        reason: why hiding it loses nothing.
    """

    category: type[Warning]
    module: str
    message: str
    reason: str


@dataclass(frozen=True)
class KnownRecord:
    """A log record demoted to DEBUG by :func:`quiet_third_party`.

    Attributes:
        loggers: the exact names of the loggers that may emit it (a filter on a logger sees only
            records logged on that very logger, not on its children).
        message: regular expression matched at the start of the formatted message.
        reason: why demoting it loses nothing.
    """

    loggers: tuple[str, ...]
    message: str
    reason: str


KNOWN_WARNINGS: tuple[KnownWarning, ...] = (
    KnownWarning(
        UserWarning, "mlflow.pyfunc.utils.data_validation",
        r"(?:\x1b\[[0-9;]*m)?Add type hints to the `predict` method",  # MLflow colours it
        "raised once when kedro-mlflow's KedroPipelineModel class is defined, at import; NeuroKedro "
        "logs no pyfunc pipeline model (its models use the mlflow.pytorch flavour), so no signature is lost",
    ),
    KnownWarning(
        KedroDeprecationWarning, "kedro.framework.cli.project",
        r"Option '--pipeline' is deprecated",
        "`kedro run --pipeline <task>` is the command this project documents; pyproject.toml admits "
        "only kedro < 2, where --pipeline still works (--pipelines is the same without this warning)",
    ),
    KnownWarning(
        UserWarning, "kedro.config.omegaconf_config",
        r"register_new_resolver\(\) is deprecated",
        "Kedro's own OmegaConfigLoader registers its resolvers with the OmegaConf call deprecated in "
        "omegaconf 2.4; nothing for a project to change, and the resolvers work",
    ),
    KnownWarning(
        UserWarning, "kedro.pipeline.node",
        r"One or more dataset names contain '\.' characters",
        "the dotted names are other namespaces' datasets read on purpose (a task's model in predict, "
        "autoencoder.model for encoder transfer): the edges kedro-viz draws between the pipelines",
    ),
    KnownWarning(
        FutureWarning, "lightning.pytorch.utilities._pytree",
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        "Lightning's internal use of torch's pytree API, once per fit; no NeuroKedro code touches it",
    ),
)

#: lightning_utilities logs Lightning's rank-zero messages on the logger of whichever Lightning
#: distribution set it last: ``lightning``'s, or ``pytorch_lightning``'s, which MLflow's pytorch
#: flavour imports when it is installed (it is, here): so the record may come from either.
LIGHTNING_LOGGERS = tuple(f"{package}.utilities.rank_zero" for package in (
    "lightning.pytorch", "pytorch_lightning", "lightning.fabric", "lightning_fabric"))

KNOWN_RECORDS: tuple[KnownRecord, ...] = (
    KnownRecord(
        ("mlflow.pytorch",), r"Saving pytorch model by Pickle or CloudPickle format requires exercising caution",
        "once per saved model (each fold and the run's ensemble): the catalog chooses serialization_format "
        "pickle on purpose (any input size stays usable), and these models are read back only by this project",
    ),
    KnownRecord(
        LIGHTNING_LOGGERS, r"💡 Tip:",
        "an advertisement for Lightning's cloud logger; NeuroKedro tracks with MLflow",
    ),
    KnownRecord(
        LIGHTNING_LOGGERS, r"(?:GPU|TPU) available: False",
        "once per fit on a machine without the device; a machine with a GPU still says 'GPU available: True'",
    ),
    KnownRecord(
        LIGHTNING_LOGGERS, r"Using (?:16bit|bfloat16) Automatic Mixed Precision",
        "once per fit: the precision is the training.precision parameter, logged to MLflow with the run",
    ),
    KnownRecord(
        LIGHTNING_LOGGERS, r"`Trainer\.fit` stopped:",
        "the fold's own line (neurokedro.pipelines.modelling) says how many epochs ran and which was best",
    ),
    KnownRecord(
        ("kedro.runner.sequential_runner",), r"Using synchronous mode for loading and saving data",
        "a tip about kedro run --async, at every run; the nodes here are compute-bound, not I/O-bound",
    ),
    KnownRecord(
        ("kedro.validation.parameter_validator",), r"No typed parameter requirements found",
        "says that no node declares typed parameters, at every run; NeuroKedro's nodes validate their own",
    ),
)


def _module_file(module: str) -> str:
    """A regular expression of the path of ``module``'s source file (``.../a/b.py`` or ``.../a/b/__init__.py``)."""
    return r"(?:^|.*[\\/])" + re.escape(module).replace(r"\.", r"[\\/]") + r"(?:\.py|[\\/]__init__\.py)"


class _DropWarnings(logging.Filter):
    """Drops captured warnings (``py.warnings`` records) that match a :class:`KnownWarning`."""

    def __init__(self, known: tuple[KnownWarning, ...]) -> None:
        super().__init__()
        # warnings.formatwarning's "<file>:<line>: <Category>: <message>", the file being the module's
        self.patterns = [
            re.compile(_module_file(k.module) + r":\d+: " + re.escape(k.category.__name__) + ": " + k.message,
                       re.IGNORECASE | re.DOTALL)
            for k in known
        ]

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(p.match(text) for p in self.patterns)


class _Demote(logging.Filter):
    """Turns the records of one logger that match one of ``patterns`` into DEBUG records, kept
    only when that logger is enabled for DEBUG."""

    def __init__(self, patterns: list[str]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG or not any(p.match(record.getMessage()) for p in self.patterns):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def _replace_filter(logger: logging.Logger, new: logging.Filter) -> None:
    """Attach ``new`` to ``logger`` in place of an earlier filter of this module (idempotent)."""
    for old in [f for f in logger.filters if type(f) is type(new)]:
        logger.removeFilter(old)
    logger.addFilter(new)


def quiet_third_party() -> None:
    """Hide :data:`KNOWN_WARNINGS` and demote :data:`KNOWN_RECORDS` to DEBUG, for this process.

    Safe to call more than once: the filters are replaced, not stacked. Other warnings and
    records are untouched; so are these, when they come from any other module or logger.
    """
    for known in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=known.message, category=known.category,
                                module=re.escape(known.module) + r"\Z")
    _replace_filter(logging.getLogger("py.warnings"), _DropWarnings(KNOWN_WARNINGS))
    by_logger: dict[str, list[str]] = {}
    for record in KNOWN_RECORDS:
        for name in record.loggers:
            by_logger.setdefault(name, []).append(record.message)
    for name, patterns in by_logger.items():
        _replace_filter(logging.getLogger(name), _Demote(patterns))
