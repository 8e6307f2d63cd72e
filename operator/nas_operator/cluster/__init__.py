"""The operator shell: Kopf handlers, the per-experiment controller, Prometheus telemetry."""
