"""The application layer: the ``recsys`` CLI and what it runs. Local runs of the
compiled pipeline, Kubeflow runs and schedules, the daily-retraining simulation,
data checks, the synthetic and MovieLens data, schema tools."""
