"""Results -> tidy table -> seaborn figures -> one static HTML page.

    python -m reports build [RESULTS ...] [--out DIR]

See reports/README.md.
"""
