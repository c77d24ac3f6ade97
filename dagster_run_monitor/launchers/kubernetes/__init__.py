"""Kubernetes: ``K8sRunLauncher`` answered from one list of Jobs a pass and remembered
container contexts, and a dead run worker's cause read from its pods."""
