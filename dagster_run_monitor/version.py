__version__ = "0.2.0"
SUPPORTED_DAGSTER = "dagster>=1.12,<1.14"  # each minor version checked in CI (tox.ini)
