"""Run launchers, one subpackage per family: ``process`` (the launcher and step executor we
ship for one machine), ``kubernetes`` and ``docker`` (Dagster's launchers kept cheap at
thousands of runs, and a dead worker's cause read from its pods or container)."""
