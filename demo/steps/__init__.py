"""Demo steps, one module per model family.

Each module defines ``TITLE`` and ``run(out: Path) -> list[Section]``; a section is a dict
with ``title``, ``text`` (HTML-safe prose or a small table) and ``figures`` (paths under
``out``).
"""
