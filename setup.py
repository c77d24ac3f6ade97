import re
from pathlib import Path

from setuptools import find_packages, setup

version: dict = {}
exec(Path("dagster_run_monitor/version.py").read_text(), version)


def long_description() -> str:
    """The README for a package index: its links into the repository's files (docs/, ...)
    would be broken there, so they become their text and the file's path, which the source
    distribution holds."""

    def plain(link: re.Match) -> str:
        text, path = link.group(1), link.group(2)
        return f"`{path}`" if text.strip("`") in path else f"{text} (`{path}`)"

    readme = Path("README.md").read_text()
    return re.sub(r"\[([^\]]+)\]\((?!https?://)([^)#]+)(#[^)]*)?\)", plain, readme)


INTEGRATIONS = "0.28,<0.30"  # dagster-postgres, -docker, -k8s of Dagster 1.12 and 1.13
setup(
    name="dagster-run-monitor",
    version=version["__version__"],
    description="Run monitoring for Dagster: stuck runs, dead run workers, resumes, timeouts.",
    long_description=long_description(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    python_requires=">=3.10,<3.14",
    packages=find_packages(include=["dagster_run_monitor", "dagster_run_monitor.*"]),
    install_requires=[
        version["SUPPORTED_DAGSTER"],
        "pendulum>=3.0,<4",
    ],
    extras_require={
        "postgres": [f"dagster-postgres>={INTEGRATIONS}"],
        "docker": [f"dagster-docker>={INTEGRATIONS}"],
        "k8s": [f"dagster-k8s>={INTEGRATIONS}"],
        "ecs": [f"dagster-aws>={INTEGRATIONS}"],
        "metrics": ["prometheus_client>=0.17,<1"],
        "slack": ["slack_sdk>=3.19,<4"],
        "msteams": [],  # the standard library: an HTTPS POST of an Adaptive Card
        "pagerduty": [],  # the standard library: PagerDuty's Events API v2
        "email": [],  # the standard library: smtplib
        "test": [
            f"dagster-docker>={INTEGRATIONS}",
            f"dagster-k8s>={INTEGRATIONS}",
            f"dagster-aws>={INTEGRATIONS}",
            f"dagster-postgres>={INTEGRATIONS}",
            "dagster-webserver>=1.12,<1.14",
            "dagster-dg-cli>=1.12,<1.14",
            "slack_sdk>=3.19,<4",
            "aiosmtpd>=1.4.4,<2",
            "trustme>=1.1,<2",
            "hypothesis>=6,<7",
            "prometheus_client>=0.17,<1",
            "pytest>=8,<10",
            "pytest-timeout>=2.3,<3",
            "playwright>=1.40,<2",
            "ruff>=0.6",
            "tox>=4,<5",
            "pyyaml>=6",
        ],
    },
    entry_points={"console_scripts": ["dagster-run-monitor=dagster_run_monitor.cli:main"]},
    classifiers=[
        "Framework :: Dagster",
        "License :: OSI Approved :: Apache Software License",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: System :: Monitoring",
    ],
)
