"""Docker: ``DockerRunLauncher`` with one client per registry login instead of one per call."""
