"""The pipelines layer: the DAG wired once (``dag``), its parameters derived from the
stages' configs (``parameters``), compiled for KFP (``kfp_pipeline``) or run in
this process (``in_process``)."""
