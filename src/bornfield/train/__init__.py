"""Training of the NN potential and Born-charge models: data, splits, loops, metrics, active learning."""
