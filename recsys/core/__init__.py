"""The core layer: what every stage, the serving code and the application share.

Contracts (``contracts``: names that cross a stage boundary), the curated schemas
(``schemas``) and the feature registry (``features``), derived features
(``derived``), table and file I/O (``tables``), the serving contract's request
encoding (``requests``), how stage parameters are declared (``config``), top-k
selection (``ranking``), progress lines and provenance. Heavier shared blocks live
here too but are imported only by the stages that need them: Beam plumbing
(``beam_io``), Keras/TFRS model blocks (``modeling``) and warm starts
(``warm_start``).

Nothing here imports a stage, the pipeline or the application.
"""
