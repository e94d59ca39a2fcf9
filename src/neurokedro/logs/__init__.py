"""What a run's log says: known third-party noise hidden at its source
(:mod:`neurokedro.logs.third_party`, installed by ``settings.py``), and the panel summarising what
the run produced at its end (:mod:`neurokedro.logs.summary`, printed by the project's hook).

Nothing is imported here, so that ``settings.py`` loads the filters without torch or MLflow.
"""
