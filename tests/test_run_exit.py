"""A ``kedro run`` process exits without walking every object in its final garbage collections
(:func:`neurokedro.hooks.freeze_objects_at_exit`), and the exit handlers still run."""

import subprocess
import sys

PROBE = """
import atexit, sys

class Cycle:
    def __del__(self):
        print("cycle finalized", flush=True)

atexit.register(lambda: print("earlier exit handler ran", flush=True))
{freeze}
a, b = Cycle(), Cycle()
a.other, b.other = b, a  # only the cyclic garbage collector can free these
del a, b
import gc
gc.disable()  # left for the interpreter's final collections
"""


def _exit_output(freeze: str) -> str:
    result = subprocess.run([sys.executable, "-c", PROBE.format(freeze=freeze)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_final_garbage_collections_skip_what_exists_at_exit_and_exit_handlers_still_run():
    assert "cycle finalized" in _exit_output("")  # what the interpreter does on its own
    frozen = _exit_output("from neurokedro.hooks import freeze_objects_at_exit\n"
                          "freeze_objects_at_exit()\nfreeze_objects_at_exit()\n")
    assert "cycle finalized" not in frozen and frozen.count("earlier exit handler ran") == 1


def test_every_session_asks_for_it():
    from types import SimpleNamespace

    from neurokedro import hooks

    hooks._FREEZE_REGISTERED = False
    try:
        context = SimpleNamespace(project_path=".", config_loader={"parameters": {}, "mlflow": {}}, params={})
        hooks.NeuroKedroHooks().after_context_created(context)
        assert hooks._FREEZE_REGISTERED
    finally:
        hooks._FREEZE_REGISTERED = True  # registered in this (the test) process: it exits the same way
