"""Results -> tidy table -> seaborn figures -> one static HTML page; and the regression
gate between two sets of results.

    python -m reports build [RESULTS ...] [--out DIR]
    python -m reports compare OLD NEW [--threshold 0.10] [--alpha 0.01] [--format terminal|markdown|csv]

See reports/README.md.
"""
