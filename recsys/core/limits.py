"""What bounds each task's memory, declared once (the defaults of the ``batch_rows``
and ``shuffle_buffer`` pipeline parameters). docs/design.md ("Bounded memory") lists
what each task holds, and what stays whole with its size formula. No heavy imports:
the pipeline's signature reads these."""

# Rows a task holds at once when it streams a table (ingest, the join's serving
# snapshots, evaluate, the trainers' reads).
BATCH_ROWS = 200_000
# Rows the trainers shuffle together as they stream the training data.
SHUFFLE_BUFFER = 500_000
# The most events the window `recsys import` proposes holds: about two hours of this
# pipeline on 2 cores (docs/benchmarks.md); older days are left out.
MAX_WINDOW_EVENTS = 20_000_000
