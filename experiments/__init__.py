"""absl-flag scripts, the commands a researcher runs, as
`python -m experiments.NAME` (README.md). Benchmarks and their peers are in
benchmarks/, generators of docs and data files in tools/."""
