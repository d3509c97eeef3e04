"""Transfer Lab's engine: data, backbones, training and analysis, with no UI code."""
