"""The user guide and the docs agree with the tree (issue 25).

Checked in README.md, CONTRIBUTING.md and docs/**/*.md, without running anything:

- every relative link points at an existing file, and a ``#anchor`` at an existing heading;
- every ``kedro run --pipeline X`` names a pipeline the project registers (or a plugin package
  of ``plugins/`` registers once installed);
- every ``--env E`` has ``conf/E/`` (except the environments the guide tells users to create);
- every ``python bench/X.py``, ``bash X`` and ``python -m pytest PATH`` names an existing file;
- every ``--params "a.b.c=..."`` key exists in the merged ``conf/base`` parameters (with
  ``conf/E`` over them when the same command has ``--env E``);
- every repository path quoted in backticks (``src/...``, ``tests/...``) exists;
- README keeps the install line and the test command that CI (``.ci/run``) runs.

The how-tos invent a few names for their examples (a model ``my_net``, a task
``score_regression``, ...); :data:`EXAMPLE_NAMES` lists them, and a path or key holding one is
not looked up.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import PROJECT_ROOT

from neurokedro import plugins

DOCS = sorted([PROJECT_ROOT / "README.md", PROJECT_ROOT / "CONTRIBUTING.md", *(PROJECT_ROOT / "docs").rglob("*.md")])

#: Environments the guide tells users to create themselves (README, "Your own cohort").
USER_ENVS = {"mycohort"}
#: Names that the how-tos make up for their examples: files and parameters a reader would add.
EXAMPLE_NAMES = ("my_net", "my_package", "score_regression", "smoothing_fwhm_mm", "median_ae")

#: Pipelines that exist whatever tasks are registered (src/neurokedro/pipeline_registry.py).
FIXED_PIPELINES = {"__default__", "data_engineering", "predict"}
#: The search pipeline of a task is ``<task>`` + this (src/neurokedro/pipelines/search/pipeline.py).
SEARCH_SUFFIX = "_search"

INSTALL_LINE = ('python -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && '
                'pip install -e ".[test]" && kedro run --pipeline age_regression')
TEST_COMMAND = "python -m pytest"

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?\s*$", re.M)
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
COMMAND_START = re.compile(r"(?:kedro run|python bench/|python -m pytest|bash )")
OPTION = r"(?:[ =])(\"[^\"]*\"|'[^']*'|[^\s`\"'\[\]]+)"  # a value: quoted, or up to a space or [optional] bracket
REPO_PATH = re.compile(r"`((?:src|tests|bench|plugins|docs|\.ci)/[^`\s]*|conf/(?:base|ixi)/[^`\s]*)`")


# ---- reading the docs ---------------------------------------------------------------------------

def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _without_code(text: str) -> str:
    """Prose only: no fenced blocks, inline code or HTML comments (links and headings live there)."""
    return INLINE_CODE.sub("", FENCE.sub("", HTML_COMMENT.sub("", text)))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 ... for repeated headings."""
    seen: dict[str, int] = {}
    found = set()
    for _, title in HEADING.findall(FENCE.sub("", HTML_COMMENT.sub("", _text(path)))):
        slug = _slug(title)
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


def links(path: Path) -> list[str]:
    prose = _without_code(_text(path))
    return LINK.findall(prose) + REFERENCE.findall(prose)


def broken_link(doc: Path, target: str) -> str | None:
    """Why ``target`` (a link in ``doc``) is broken, or None. External links are not fetched."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # http:, https:, mailto: ...
        return None
    path_part, _, anchor = target.partition("#")
    resolved = (doc.parent / path_part).resolve() if path_part else doc
    if not resolved.exists():
        return f"{target!r}: no file {resolved.relative_to(PROJECT_ROOT) if resolved.is_relative_to(PROJECT_ROOT) else resolved}"
    if anchor:
        if resolved.suffix != ".md" or resolved.is_dir():
            return f"{target!r}: an anchor into a file that is not Markdown"
        if anchor not in anchors(resolved):
            return f"{target!r}: no heading with the anchor #{anchor} in {resolved.name}"
    return None


def command_segments(text: str) -> Iterator[str]:
    """Each command the docs give: from ``kedro run`` / ``python bench/`` / ``python -m pytest`` /
    ``bash`` to the end of its line (continuations joined), the closing backtick or a comment;
    and each inline code span that is an option alone (```--params a.b=1```)."""
    text = HTML_COMMENT.sub("", text).replace("\\\n", " ")
    for line in text.splitlines():
        for match in COMMAND_START.finditer(line):
            segment = line[match.start():]
            segment = segment.split("`", 1)[0]
            segment = re.split(r"\s#", segment, maxsplit=1)[0]
            yield segment.strip()
        for span in INLINE_CODE.findall(line):
            if span.startswith(("`--params", "`--env")):
                yield span.strip("`")


def _options(segment: str, name: str) -> list[str]:
    return [value.strip("\"'") for value in re.findall(rf"{name}{OPTION}", segment)]


def _is_placeholder(value: str) -> bool:
    return any(mark in value for mark in ("<", ">", "{", "…", "...")) or value.isupper()


def _is_example(value: str) -> bool:
    return any(name in value for name in EXAMPLE_NAMES)


# ---- what the project has -----------------------------------------------------------------------

def _plugin_task_entry_points(pyproject: Path) -> list[str]:
    """Task names a ``pyproject.toml`` registers under ``neurokedro.tasks`` (no TOML parser on 3.10)."""
    section = re.search(r'^\[project\.entry-points\."neurokedro\.tasks"\]\s*$(.*?)(?=^\[|\Z)', _text(pyproject), re.M | re.S)
    if not section:
        return []
    return re.findall(r'^\s*([\w.-]+)\s*=', section.group(1), re.M)


def _plugin_packages() -> list[Path]:
    return sorted(p.parent for p in (PROJECT_ROOT / "plugins").glob("*/pyproject.toml"))


def _pipelines_of(tasks: set[str]) -> set[str]:
    return FIXED_PIPELINES | tasks | {task + SEARCH_SUFFIX for task in tasks}


@pytest.fixture(scope="module")
def pipelines() -> set[str]:
    """The pipelines the installed project registers, and those each plugin of plugins/ adds."""
    tasks = set(plugins.names("tasks"))
    for package in _plugin_packages():
        tasks |= set(_plugin_task_entry_points(package / "pyproject.toml"))
    return _pipelines_of(tasks)


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping) else value
    return merged


def _env_parameters(env: str) -> dict[str, Any]:
    """The parameters of one ``conf/<env>`` (the patterns of settings.py: ``parameters*`` files,
    also in sub-folders)."""
    merged: dict[str, Any] = {}
    for path in sorted((PROJECT_ROOT / "conf" / env).rglob("parameters*.yml")):
        merged = _merge(merged, yaml.safe_load(_text(path)) or {})
    return merged


@pytest.fixture(scope="module")
def parameters() -> dict[str | None, dict[str, Any]]:
    """``{None: conf/base, env: conf/base + conf/<env>}``, each with the plugins' shipped task
    defaults beneath (a plugin registering one task ships its ``parameters.yml`` for it)."""
    shipped: dict[str, Any] = {}
    for package in _plugin_packages():
        tasks = _plugin_task_entry_points(package / "pyproject.toml")
        files = sorted(package.glob("src/*/parameters.yml"))
        if len(tasks) == 1 and len(files) == 1:
            shipped[tasks[0]] = yaml.safe_load(_text(files[0])) or {}
    base = _merge(shipped, _env_parameters("base"))
    envs = [p.name for p in (PROJECT_ROOT / "conf").iterdir() if p.is_dir() and p.name != "base"]
    return {None: _with_schema_defaults(base),
            **{env: _with_schema_defaults(_merge(base, _env_parameters(env))) for env in envs}}


def _with_schema_defaults(tree: Mapping[str, Any]) -> dict[str, Any]:
    """``tree`` over every schema's defaults (:mod:`neurokedro.schemas`): an option the YAML
    leaves out exists too, with its default."""
    from neurokedro.schemas.validate import PER_TASK, TOP_LEVEL

    out = {key: _merge(schema().model_dump(), tree.get(key) or {}) for key, schema in TOP_LEVEL.items()}
    out = _merge(out, {key: value for key, value in tree.items() if key not in TOP_LEVEL})
    for task, block in tree.items():
        if isinstance(block, Mapping) and "training" in block:
            out[task] = _merge(dict(block), {key: _merge(schema().model_dump(), block.get(key) or {})
                                             for key, schema in PER_TASK.items() if key in block or key not in TOP_LEVEL})
    return out


def _has_key(tree: Mapping[str, Any], dotted: str) -> bool:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _params_keys(value: str) -> list[str]:
    """The keys of a Kedro ``--params`` value ``a.b=1,c.d=[1, 2]``."""
    return [item.split("=", 1)[0].strip() for item in re.split(r",(?=\s*[\w.]+=)", value) if "=" in item]


# ---- the tests ----------------------------------------------------------------------------------

def test_the_documents_are_found():
    names = {p.relative_to(PROJECT_ROOT).as_posix() for p in DOCS}
    assert {"README.md", "CONTRIBUTING.md", "docs/results.md"} <= names
    assert any(name.startswith("docs/howto/") for name in names)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(PROJECT_ROOT).as_posix())
def test_every_relative_link_points_at_a_file_and_heading(doc):
    problems = [why for target in links(doc) if (why := broken_link(doc, target))]
    assert not problems, f"{doc.name}: broken links:\n" + "\n".join(problems)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(PROJECT_ROOT).as_posix())
def test_every_command_names_what_exists(doc, pipelines, parameters):
    problems = []
    for segment in command_segments(_text(doc)):
        envs = [e for e in _options(segment, "--env") if not _is_placeholder(e)]
        for env in envs:
            if env not in USER_ENVS and not (PROJECT_ROOT / "conf" / env).is_dir():
                problems.append(f"{segment!r}: no conf/{env}/")
        if segment.startswith("kedro run"):
            for name in _options(segment, "--pipeline"):
                if not _is_placeholder(name) and name not in pipelines:
                    problems.append(f"{segment!r}: pipeline {name!r} is not registered ({sorted(pipelines)})")
        elif segment.startswith("python bench/"):
            script = segment.split()[1]
            if not _is_placeholder(script) and not (PROJECT_ROOT / script).is_file():
                problems.append(f"{segment!r}: no {script}")
        elif segment.startswith("python -m pytest"):
            for arg in segment.split()[3:]:
                if arg.startswith("-"):
                    break  # options (and their values) follow the paths
                if not _is_example(arg) and not (PROJECT_ROOT / arg.split("::")[0]).exists():
                    problems.append(f"{segment!r}: no {arg}")
        elif segment.startswith("bash "):
            script = segment.split()[1]
            if not _is_placeholder(script) and not (PROJECT_ROOT / script).is_file():
                problems.append(f"{segment!r}: no {script}")
        tree = parameters.get(envs[0] if envs and envs[0] in parameters else None)
        for value in _options(segment, "--params"):
            for key in _params_keys(value):
                if not _is_placeholder(key) and not _is_example(key) and not _has_key(tree, key):
                    problems.append(f"{segment!r}: no parameter {key!r} in conf/base" + (f" + conf/{envs[0]}" if envs else ""))
    assert not problems, f"{doc.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(PROJECT_ROOT).as_posix())
def test_every_override_quoted_alone_names_a_parameter(doc, parameters):
    """An override quoted without its command (```preprocessing.registration=affine```, as the
    results tables give them) names a parameter too, when it starts at a top-level key."""
    base = parameters[None]
    missing = []
    for span in INLINE_CODE.findall(HTML_COMMENT.sub("", _text(doc))):
        keys = _params_keys(span.strip("`"))
        if not keys or not all(re.fullmatch(r"[a-z_]\w*(\.\w+)+", k) for k in keys):
            continue
        if keys[0].split(".")[0] not in base:  # relative to a task's block (max_epochs=80, ...)
            continue
        # in conf/base, or in the environment the run would name
        missing += [k for k in keys if not _is_example(k) and not any(_has_key(t, k) for t in parameters.values())]
    assert not missing, f"{doc.name} quotes overrides of parameters that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(PROJECT_ROOT).as_posix())
def test_every_repository_path_in_backticks_exists(doc):
    missing = []
    for path in REPO_PATH.findall(HTML_COMMENT.sub("", _text(doc))):
        path = path.rstrip(".,;:)")
        if _is_placeholder(path) or _is_example(path) or "*" in path:
            continue
        if not (PROJECT_ROOT / path.split("::")[0]).exists():
            missing.append(path)
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"


def test_readme_keeps_the_install_line_and_the_test_command_ci_runs():
    readme = _text(PROJECT_ROOT / "README.md")
    blocks = [block for block in re.findall(r"^```\w*\n(.*?)^```", readme, re.M | re.S)]
    assert any(INSTALL_LINE in block for block in blocks), "README lost the one-line install and demo run"
    assert any(line.strip() == TEST_COMMAND for block in blocks for line in block.splitlines()), \
        "README lost the test command"
    ci = _text(PROJECT_ROOT / ".ci" / "run")
    assert any(line.strip() == TEST_COMMAND for line in ci.splitlines()), ".ci/run no longer runs README's test command"


def test_the_pipeline_names_checked_are_the_ones_the_registry_builds():
    """The static rule above (fixed names, tasks, ``<task>_search``) is the registry's."""
    from neurokedro.pipeline_registry import register_pipelines
    from neurokedro.pipelines.search import SUFFIX

    assert SUFFIX == SEARCH_SUFFIX
    assert set(register_pipelines()) == _pipelines_of(set(plugins.names("tasks")))


def test_the_link_check_finds_a_broken_link_and_anchor(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("# A heading\n\n[ok](#a-heading) [gone](missing.md) [no anchor](#nowhere)\n"
                   "```\n[in code](not-a-link.md)\n```\n", encoding="utf-8")
    assert links(doc) == ["#a-heading", "missing.md", "#nowhere"]
    assert broken_link(doc, "#a-heading") is None
    assert "no file" in broken_link(doc, "missing.md")
    assert "no heading" in broken_link(doc, "#nowhere")
    assert _slug("Raw scans: registration and `bias_correction`") == "raw-scans-registration-and-bias_correction"
