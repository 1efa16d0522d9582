"""Building the variants: data, model, specs, quantize, reference, info, build, report."""
