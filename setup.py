from pathlib import Path

from setuptools import find_packages, setup

version: dict = {}
exec(Path("dagster_run_monitor/version.py").read_text(), version)

setup(
    name="dagster-run-monitor",
    version=version["__version__"],
    description="Run monitoring for Dagster: stuck runs, dead run workers, resumes, timeouts.",
    long_description=Path("README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.14",
    packages=find_packages(include=["dagster_run_monitor", "dagster_run_monitor.*"]),
    install_requires=[
        "dagster>=1.13,<1.14",
        "pendulum>=3.0,<4",
    ],
    extras_require={
        "postgres": ["dagster-postgres>=0.29,<0.30"],
        "docker": ["dagster-docker>=0.29,<0.30"],
        "k8s": ["dagster-k8s>=0.29,<0.30"],
        "metrics": ["prometheus_client>=0.17,<1"],
        "test": [
            "dagster-docker>=0.29,<0.30",
            "dagster-k8s>=0.29,<0.30",
            "dagster-postgres>=0.29,<0.30",
            "hypothesis>=6,<7",
            "prometheus_client>=0.17,<1",
            "pytest>=8,<10",
            "pytest-rerunfailures>=14",
            "pytest-timeout>=2.3,<3",
            "playwright>=1.40,<2",
            "ruff>=0.6",
            "tox>=4,<5",
            "dagster-webserver>=1.13,<1.14",
            "pyyaml>=6",
        ],
    },
    entry_points={"console_scripts": ["dagster-run-monitor=dagster_run_monitor.cli:main"]},
    classifiers=[
        "Framework :: Dagster",
        "Programming Language :: Python :: 3",
    ],
)
