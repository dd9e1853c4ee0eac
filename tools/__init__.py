"""Generators of the repository's reference files, as
`python -m tools.NAME`: docs/configs.md, the lm-eval task data."""
