"""The README is a landing page, every link between our Markdown pages resolves (the file
exists and, for ``page.md#anchor``, the page has that heading: GitHub's anchors), and every
YAML block that configures the instance loads as written."""

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef

from dagster_run_monitor import RunMonitorInstance
from dagster_run_monitor.config.parse import read_settings
from dagster_run_monitor_tests import test_helm as helm

ROOT = Path(__file__).resolve().parent.parent
PAGES = [
    ROOT / "README.md",
    ROOT / "CONTRIBUTING.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "docs").glob("*/*.md")),  # docs/observability/
]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces -> -."""
    found = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def test_the_readme_is_a_landing_page():
    assert len((ROOT / "README.md").read_text().splitlines()) < 150


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_between_our_pages_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue  # a web address
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with that anchor")
    assert broken == []


# --- every YAML block that configures the instance loads as written ------------------------

BLOCK = re.compile(r"(?:<!-- ([^>]*) -->\n)?```ya?ml\n(.*?)```", re.S)
INSTANCE_KEYS = {"instance_class", "run_monitoring", "run_launcher", "run_coordinator"}
HELM_KEYS = {"dagsterDaemon", "additionalInstanceConfig"}


def yaml_blocks() -> list[Any]:
    """Each ```yaml block of the pages that configures the instance (a dagster.yaml or the
    Helm chart's values), with the comment just above it, if any."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in BLOCK.finditer(text):
            config = yaml.safe_load(match.group(2))
            if isinstance(config, dict) and set(config) & (INSTANCE_KEYS | HELM_KEYS):
                line = text[: match.start(2)].count("\n")
                name = f"{page.relative_to(ROOT)}:{line}"
                found.append(pytest.param(config, match.group(1) or "", id=name))
    return found


def with_env_secrets(config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``{env: VARIABLE}`` of the block set, as a user's deployment sets it."""
    if isinstance(config, dict):
        if set(config) == {"env"}:
            monkeypatch.setenv(str(config["env"]), "https://secrets.example/from-the-env")
        for value in config.values():
            with_env_secrets(value, monkeypatch)
    elif isinstance(config, list):
        for value in config:
            with_env_secrets(value, monkeypatch)


@pytest.mark.parametrize(("config", "note"), yaml_blocks())
def test_every_yaml_block_that_configures_the_instance_loads_as_written(
    config, note, tmp_path, monkeypatch
):
    """The block is written into a dagster.yaml (with our instance class where the block
    leaves it to the reader, and SQLite storage in a temporary home), or rendered as Dagster's
    Helm chart renders its values; the instance is loaded with the launcher the block names
    (Dagster's default where it names none) and the monitor's settings are read, as the daemon
    does at start-up. A block marked ``<!-- partial: why -->`` is skipped, saying why; one
    marked ``<!-- after: values.yaml -->`` is a Helm values file given after that one."""
    if note.startswith("partial:"):
        pytest.skip(note)
    with_env_secrets(config, monkeypatch)
    if set(config) & HELM_KEYS:
        values = helm.CHART_DEFAULTS
        if note.startswith("after:"):  # a second values file: helm -f first.yaml -f this
            values = helm.merged(values, yaml.safe_load((ROOT / note[6:].strip()).read_text()))
        instance = helm.load(helm.merged(values, config), tmp_path)
    else:
        ours = {"instance_class": {"module": "dagster_run_monitor", "class": "RunMonitorInstance"}}
        (tmp_path / "dagster.yaml").write_text(yaml.safe_dump({**ours, **config}))
        instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path)))
    with instance:
        assert isinstance(instance, RunMonitorInstance)
        read_settings(instance)


def test_the_reasons_table_lists_every_reason_the_code_writes():
    from dagster_run_monitor.core import constants

    written = {
        v for k, v in vars(constants).items() if k.startswith("REASON_") and k != "REASON_TAG"
    }
    text = (ROOT / "docs" / "configuration.md").read_text()
    table = text.split("### `run_monitor/reason`: why the monitor acted", 1)[1].split("\n\n")[1]
    documented = set(re.findall(r"^\| `(\w+)` \|", table, re.M))
    assert documented == written


def test_contributing_names_every_suite_module_and_benchmark():
    """CONTRIBUTING.md's layout, test list and benchmark list keep up with the code."""
    text = (ROOT / "CONTRIBUTING.md").read_text()
    package = ROOT / "dagster_run_monitor"
    missing = [p.name for p in (ROOT / "dagster_run_monitor_tests").glob("test_*.py")]
    missing = [name for name in missing if name not in text]
    for module in package.glob("*/*.py"):
        if module.stem != "__init__" and f"`{module.stem}`" not in text:
            missing.append(str(module.relative_to(ROOT)))
    for bench in (ROOT / "benchmarks").iterdir():
        if bench.name not in ("__init__.py", "RESULTS.md", "__pycache__"):
            if bench.stem not in text:
                missing.append(str(bench.relative_to(ROOT)))
    assert missing == []


@pytest.mark.parametrize(
    "config",
    sorted((ROOT / "docs").glob("*/*.yaml")),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_page_the_helm_and_observability_files_name_resolves(config):
    """The overlays and the alert rules name pages of the repository (``docs/x.md#anchor``)
    in comments and runbook annotations: each page exists, with that heading."""
    broken = []
    for target in re.findall(r"\bdocs/[\w/.-]+\.md(?:#[\w-]+)?", config.read_text()):
        path, _, anchor = target.partition("#")
        page = ROOT / path
        if not page.exists():
            broken.append(f"{target}: no such file")
        elif anchor and anchor not in anchors(page):
            broken.append(f"{target}: no heading with that anchor")
    assert broken == []
