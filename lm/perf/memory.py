"""What a compiled program needs in device memory, from XLA's analysis."""


def memory_sizes(compiled) -> dict[str, int]:
  """Bytes of a compiled program per device, from XLA's memory analysis:
  arguments, outputs, what outputs reuse of the arguments (donation),
  temporaries, and the peak they add up to."""
  analysis = compiled.memory_analysis()
  sizes = {'argument_bytes': analysis.argument_size_in_bytes,
           'output_bytes': analysis.output_size_in_bytes,
           'alias_bytes': analysis.alias_size_in_bytes,
           'temp_bytes': analysis.temp_size_in_bytes}
  sizes['peak_bytes'] = (sizes['argument_bytes'] + sizes['output_bytes']
                         - sizes['alias_bytes'] + sizes['temp_bytes'])
  return sizes
