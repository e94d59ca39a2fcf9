"""Kedro project settings."""

from pathlib import Path

from neurokedro.config import TaskDefaultsConfigLoader
from neurokedro.hooks import NeuroKedroHooks
from neurokedro.logs.third_party import quiet_third_party

# Kedro reads this module when it bootstraps the project, before it imports the plugins' commands
# and the pipelines: known third-party warnings are hidden from then on (see neurokedro.logs).
quiet_third_party()

# kedro-mlflow registers its own hooks through its entry point; nothing to add for it here.
HOOKS = (NeuroKedroHooks(),)

# Kedro's OmegaConfigLoader, plus the default parameters a plugin's task ships, beneath conf/.
CONFIG_LOADER_CLASS = TaskDefaultsConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment (conf/ixi, conf/local) overrides only the keys it names; the rest of
    # conf/base stays, so cohort environments stay short.
    "merge_strategy": {"parameters": "soft"},
    # ${cwd:} in mlflow.yml: MLflow caches database stores by URI, so a relative
    # sqlite:///mlflow.db would be shared by every project a process runs; absolute it is not.
    "custom_resolvers": {"cwd": lambda: Path.cwd().as_posix()},
    "config_patterns": {
        "parameters": ["parameters*", "parameters*/**", "**/parameters*"],
        "mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"],
    },
}
