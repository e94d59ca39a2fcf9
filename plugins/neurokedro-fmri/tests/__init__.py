"""Tests of the neurokedro-fmri plugin (a package, so that its conftest never shadows the project's
``tests/conftest.py`` when one pytest run collects both)."""
