"""What a workdir holds on disk, and how it is written safely: the file
layout, orbax checkpoints and their checksums, the run lock, preemption
markers, and new directories that appear whole or not at all."""
